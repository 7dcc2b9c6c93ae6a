"""The project's user-facing errors.

Every error that a user can act on (a bad config, a missing file, a run folder in use) is a
`TailCLIPError`: the command lines print its message in one line and exit 1. Anything else
is a bug of ours and keeps its traceback.

The subclasses live beside the code that raises them (`ConfigError` in `tailclip.config`,
`CheckpointError` in `tailclip.checkpoint`, ...); those that name no single concept live here.
"""


class TailCLIPError(Exception):
    """An error in the user's inputs or set-up, with a message that says what to change."""


class MissingFileError(TailCLIPError, FileNotFoundError):
    """A file or folder that the config, a flag or a split file names does not exist."""


class DeviceError(TailCLIPError, RuntimeError):
    """The device that the config or a flag asks for is not on this machine."""
