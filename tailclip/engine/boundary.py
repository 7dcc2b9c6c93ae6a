"""The command lines' error boundary: what the user or the machine does to a command, in one
line and an exit code.

- The user's errors (``USER_ERRORS``: a bad config, a missing file, a folder in use) and the
  machine's refusals to write (a read-only disk, a missing permission, a path through a file,
  no space, a quota: ``FileSystemError``, or the bare ``OSError`` of a library) print one
  line naming the file and the way on, exit 1.
- A command stopped on request (``CommandStopped``: a training saved and stopped by a
  signal) prints what it kept, exit 128 + the signal's number; Ctrl-C elsewhere, exit 130.
- Anything else is a bug of ours and keeps its traceback.

The command lines import it once their arguments are parsed (its errors import the clip
package, and so torch), so that --help and a usage error answer at once.
"""
import contextlib
import errno
import os
import re
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from tailclip.errors import (
    NO_SPACE_ERRNOS,
    REFUSAL_REMEDIES,
    USER_ERRORS,
    FileSystemError,
    TailCLIPError,
    filesystem_error,
)


class CommandStopped(Exception):
    """A command stopped by a signal once what it had done was saved; the message says what."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


def run_command(body: Callable[[], int], error_prefix: str = "error",
                interrupted: str = "interrupted") -> int:
    """``body()``'s exit code; the errors above as one line on stderr and theirs."""
    try:
        return body()
    except USER_ERRORS as error:  # the user's to fix: the message says what
        message, code = f"{error_prefix}: {error}", 1
    except OSError as error:  # the machine refusing a write, wherever a library met it
        refused = filesystem_error(error.filename or "a file", error) or _file_in_the_way(error)
        if refused is None:
            raise
        message, code = f"{error_prefix}: {refused}", 1
    except CommandStopped as error:
        message, code = str(error), 128 + error.signal_number
    except KeyboardInterrupt:
        message, code = interrupted, 130
    print(message, file=sys.stderr)
    return code


def _file_in_the_way(error: OSError) -> FileSystemError | None:
    """A folder that cannot be made because a file has its name (``mkdir(exist_ok=True)``
    says EEXIST, not ENOTDIR)."""
    if error.errno != errno.EEXIST or not error.filename or os.path.isdir(error.filename):
        return None
    return FileSystemError(f"cannot write {error.filename}: it is a file, not a folder", "use another folder")


def check_writable(folder, what: str, choose: str) -> None:
    """Refuse, before any work, a ``folder`` that the machine will not let us create or write
    into (a read-only disk, a missing permission, a path through a file, ``/proc``): a
    `FileSystemError` naming it, whose way on is ``choose`` (how the user names another).
    Nothing is left behind: the check writes a nameless file into the nearest folder that
    exists."""
    folder = Path(folder)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(existing))
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        remedy = "free some space" if error.errno in NO_SPACE_ERRNOS else REFUSAL_REMEDIES.get(
            error.errno, "use another folder")
        raise FileSystemError(f"cannot write the {what} {folder}: {error.strerror} (in {existing})",
                              f"{remedy} ({choose})") from None


class OutOfMemoryError(TailCLIPError, MemoryError):
    """A phase of a run (a training step, an evaluation) ran out of memory."""


def out_of_memory(error: BaseException) -> str | None:
    """The allocator's words when ``error`` is running out of memory (torch's CPU allocator,
    CUDA's ``torch.OutOfMemoryError``, Python's MemoryError), else None."""
    if not isinstance(error, (MemoryError, RuntimeError)):
        return None
    found = re.search(r"DefaultCPUAllocator: can't allocate memory[^.]*|\w+ out of memory", str(error))
    return found.group(0) if found else "out of memory" if isinstance(error, MemoryError) else None


@contextlib.contextmanager
def memory_of(phase: str, lower: str, way_on: Callable[[], str]):
    """Running out of memory in the block is an `OutOfMemoryError` in one line: the
    ``phase``, the allocator's words, the options that ``lower`` its memory, and ``way_on()``."""
    try:
        yield
    except (MemoryError, RuntimeError) as error:
        cause = out_of_memory(error)
        if cause is None:
            raise
        raise OutOfMemoryError(f"out of memory in {phase} ({cause}); it needs less with {lower}; "
                               f"{way_on()}") from None
