"""The one exception type a user sees as a one-line message (exit status 2), never a traceback."""

import functools
import sys
from typing import Optional, Protocol, Sequence


class UserInputError(ValueError):
    """Bad input from the user: a file, a flag or a value. The message names it and says what is wrong."""


class WeightsFileError(UserInputError):
    """A weight or params file that cannot be used: wrong format, layout, shapes or checksum."""


def reason(error: object, *, first_line: bool = False) -> str:
    """Why `error` happened, as a short phrase for a one-line message ("cannot read x (…)").

    The operating system's reason (OSError.strerror, also set by PyAV's errors) where there is
    one: the message names the path already. Otherwise the error's text on one line: runs of
    whitespace, newlines included, become single spaces, or with `first_line` only its first
    line is kept (for libraries whose messages run to paragraphs). An empty text gives the
    error's type name.
    """
    text = getattr(error, "strerror", None) or str(error)
    if first_line:
        text = next(iter(str(text).strip().splitlines()), "")
    return " ".join(str(text).split()) or type(error).__name__


# What a run that does not fit can change (the flags --estimate-memory tabulates).
FIT_HINT = ("--estimate-memory shows what fits: --remat tiles, --storage-dtype bfloat16, a smaller "
            "--lbfgs-memory or --image-size, or more devices")


def memory_refusal(error: BaseException) -> Optional[UserInputError]:
    """The one-line error for an allocation that failed (XLA's RESOURCE_EXHAUSTED on a device or
    the host, or Python's MemoryError), or None for any other error. The fit check refuses runs
    it counts as too large before they compile; this is for what it cannot see (memory another
    process took, a compiler's temporaries beyond the estimate)."""
    text = str(error)
    if not (isinstance(error, MemoryError) or "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()):
        return None
    return UserInputError(f"the run does not fit in memory ({reason(error, first_line=True)}): {FIT_HINT}")


def print_error(error: object) -> int:
    """The commands' one way to end on bad input: `error: <what>` on stderr; returns exit status 2."""
    print(f"error: {error}", file=sys.stderr)
    return 2


class MainFn(Protocol):
    """A command's main: its arguments (default: sys.argv's) -> exit status."""

    def __call__(self, argv: Optional[Sequence[str]] = None) -> int: ...


def bad_input_exits_2(main: MainFn) -> MainFn:
    """A command's main that turns UserInputError into its one line and exit status 2
    (`print_error`). Commands check their flags before they write anything, so a refused flag
    leaves nothing behind."""

    @functools.wraps(main)
    def checked(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except UserInputError as error:
            return print_error(error)

    return checked
