"""The project's user-facing errors.

Every error that a user can act on (a bad config, a missing file, a run folder in use) is a
`TailCLIPError`: the command lines print its message in one line and exit 1. Anything else
is a bug of ours and keeps its traceback.

The subclasses live beside the code that raises them (`ConfigError` in `tailclip.config`,
`CheckpointError` in `tailclip.engine.checkpoint`, ...); those that name no single concept live here.
"""
import errno
import os

from clip.errors import ClipError


class TailCLIPError(Exception):
    """An error in the user's inputs or set-up, with a message that says what to change."""


# What the command lines show in one line: the project's errors and those of its clip package.
USER_ERRORS = (TailCLIPError, ClipError)


class MissingFileError(TailCLIPError, FileNotFoundError):
    """A file or folder that the config, a flag or a split file names does not exist."""


class DeviceError(TailCLIPError, RuntimeError):
    """The device that the config or a flag asks for is not on this machine."""


class FileSystemError(TailCLIPError, OSError):
    """A file or folder that the machine does not let us write: a read-only disk, a missing
    permission, a path through a file, no space, a quota. ``remedy``: what frees the way."""

    def __init__(self, message: str, remedy: str):
        super().__init__(f"{message}; {remedy}")
        self.bare, self.remedy = message, remedy

    def then(self, way_on: str) -> "FileSystemError":
        """The same error, with what to do once the remedy is applied."""
        return type(self)(self.bare, f"{self.remedy}, then {way_on}")


class NoSpaceError(FileSystemError):
    """A file could not be written for lack of space (a full disk, a quota, a file-size limit)."""


NO_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# The other refusals of the machine, with what frees the way.
REFUSAL_REMEDIES = {
    errno.EROFS: "its disk is read-only: use a folder on a writable disk",
    errno.EACCES: "this user may not write there: make it writable, or use another folder",
    errno.EPERM: "this user may not write there: make it writable, or use another folder",
    errno.ENOTDIR: "a part of its path is a file, not a folder: use another folder",
}


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


def is_filesystem_refusal(error: BaseException) -> bool:
    """Whether ``error`` is the machine refusing a write (`FileSystemError`'s causes)."""
    return isinstance(error, OSError) and (error.errno in NO_SPACE_ERRNOS or error.errno in REFUSAL_REMEDIES)


def filesystem_error(path, error: BaseException) -> FileSystemError | None:
    """A `FileSystemError` naming ``path`` when ``error`` comes from the machine refusing a
    write (a `NoSpaceError` for a lack of space), else None."""
    cause = caused_by(error, is_filesystem_refusal)
    if cause is None:
        return None
    if cause.errno in NO_SPACE_ERRNOS:
        return NoSpaceError(f"cannot write {path}: no space left ({cause.strerror})", "free some space")
    # Where the refusal came from, unless it is the file itself or its temporary twin beside it.
    beside = cause.filename and os.path.dirname(os.fspath(cause.filename)) == os.path.dirname(os.fspath(path))
    where = f" ({cause.filename})" if cause.filename and not beside else ""
    return FileSystemError(f"cannot write {path}: {cause.strerror}{where}", REFUSAL_REMEDIES[cause.errno])
