"""Flag values the benchmark command lines share (a bad one is refused by nst_jax.errors.bad_input_exits_2)."""

from typing import Sequence, Tuple

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


def name_list(flag: str, text: str, choices: Sequence[str]) -> Tuple[str, ...]:
    """A comma-separated list of names out of `choices`; else UserInputError naming `flag`."""
    names = tuple(part.strip() for part in text.split(","))
    unknown = [name for name in names if name not in choices]
    if unknown:
        raise UserInputError(f"{flag}: {', '.join(unknown)} is not one of {', '.join(choices)}")
    return names


def at_least(flag: str, value: int, minimum: int = 1) -> int:
    """`value` if it is at least `minimum`; else UserInputError naming `flag`."""
    if value < minimum:
        raise UserInputError(f"{flag}: must be at least {minimum}, got {value}")
    return value
