"""The clip package's user-facing errors: a message that says what to change. A program built
on the package shows them in one line (the project's command lines do); anything else raised
here is a bug and keeps its traceback."""


class ClipError(Exception):
    """An error in what the package's user asked for: a model name, a file, an address."""


class ClipFileNotFoundError(ClipError, FileNotFoundError):
    """A weights or vocabulary file that was named does not exist."""
