"""The one exception type a user sees as a one-line message (exit status 2), never a traceback."""


class UserInputError(ValueError):
    """Bad input from the user: a file, a flag or a value. The message names it and says what is wrong."""


class WeightsFileError(UserInputError):
    """A weight or params file that cannot be used: wrong format, layout, shapes or checksum."""
