"""The one exception type a user sees as a one-line message (exit status 2), never a traceback."""


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
