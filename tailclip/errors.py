"""The project's user-facing errors.

Every error that a user can act on (a bad config, a missing file, a run folder in use) is a
`TailCLIPError`: the command lines print its message in one line and exit 1. Anything else
is a bug of ours and keeps its traceback.

The subclasses live beside the code that raises them (`ConfigError` in `tailclip.config`,
`CheckpointError` in `tailclip.engine.checkpoint`, ...); those that name no single concept live here.
"""
import errno

from clip.errors import ClipError


class TailCLIPError(Exception):
    """An error in the user's inputs or set-up, with a message that says what to change."""


# What the command lines show in one line: the project's errors and those of its clip package.
USER_ERRORS = (TailCLIPError, ClipError)


class MissingFileError(TailCLIPError, FileNotFoundError):
    """A file or folder that the config, a flag or a split file names does not exist."""


class DeviceError(TailCLIPError, RuntimeError):
    """The device that the config or a flag asks for is not on this machine."""


class NoSpaceError(TailCLIPError, OSError):
    """A file could not be written for lack of space (a full disk, a quota, a file-size limit)."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def caused_by(error: BaseException, condition) -> BaseException | None:
    """The first exception of ``error``'s chain (itself, then its causes and contexts) for
    which ``condition`` holds: what a library's wrapping (torch.save's RuntimeError around a
    failed write) was raised for."""
    seen = set()
    while error is not None and id(error) not in seen:
        if condition(error):
            return error
        seen.add(id(error))
        error = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    return None


def is_no_space(error: BaseException) -> bool:
    return isinstance(error, OSError) and error.errno in NO_SPACE_ERRNOS


def no_space_error(path, error: BaseException) -> NoSpaceError | None:
    """A `NoSpaceError` naming ``path`` when ``error`` comes from a lack of space, else None."""
    cause = caused_by(error, is_no_space)
    return None if cause is None else NoSpaceError(f"cannot write {path}: no space left ({cause.strerror})")
