"""Flag values the benchmark command lines share."""

from typing import Tuple

from nst_jax.errors import UserInputError


def int_list(flag: str, text: str, minimum: int = 1) -> Tuple[int, ...]:
    """A comma-separated list of integers, each at least `minimum`; else UserInputError naming `flag`."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise UserInputError(f"{flag}: {text!r} is not a comma-separated list of integers") from None
    if any(value < minimum for value in values):
        raise UserInputError(f"{flag}: every value must be at least {minimum}, got {text!r}")
    return values
