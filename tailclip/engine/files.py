"""Every file the project writes, written atomically: a reader, or the run that comes after a
crash, sees the old file or the new one, never half of one.

Checkpoints, the run files rewritten from a checkpoint (``metrics.jsonl``, ``config.json``),
``sweep.json``, the reports, charts, thresholds, comparisons and predictions all go through
`write_atomic`. What is appended as it happens (the lines of ``metrics.jsonl`` between two
checkpoints, TensorBoard's event files, a sweep's run logs) is a stream, not a rewrite: a
crash can cut its last line short, and the run's record (its checkpoint) restores it.
"""
import contextlib
import json
import os
import tempfile
from pathlib import Path

from tailclip.errors import caused_by, filesystem_error


def write_atomic(path, write) -> Path:
    """``write(f)`` to a binary file that becomes ``path`` only once complete, so that an
    interrupted write never replaces a good file.

    The bytes go to a temporary file in the same folder (same file system, so the rename is
    atomic), are flushed to disk, and only then renamed over ``path``. On any failure,
    Ctrl-C included, the temporary file is removed and the old ``path`` is left as it was.
    A lack of space, or a write the machine refuses, is a `FileSystemError` naming ``path``, and a
    Ctrl-C that a library (torch.save) wrapped in a RuntimeError is a KeyboardInterrupt again.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise (filesystem_error(path, error) or error) from None
    try:
        os.chmod(tmp_name, 0o666 & ~_umask())  # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        if caused_by(error, lambda cause: isinstance(cause, KeyboardInterrupt)):
            raise KeyboardInterrupt from None
        refused = filesystem_error(path, error)
        if refused is not None:
            raise refused from None
        raise
    _fsync_directory(path.parent)
    return path


def write_text(path, text: str) -> Path:
    """``text`` (UTF-8) to ``path`` with `write_atomic`."""
    return write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, document, **dumps) -> Path:
    """``document`` as indented JSON (a final newline) to ``path`` with `write_atomic`;
    ``dumps`` go to `json.dumps` (``allow_nan=False``, ``sort_keys``...)."""
    return write_text(path, json.dumps(document, indent=2, **dumps) + "\n")


def write_figure(path, figure, **savefig) -> Path:
    """A matplotlib ``figure`` as a PNG at ``path`` with `write_atomic`."""
    return write_atomic(path, lambda f: figure.savefig(f, format="png", **savefig))


def remove_partial_writes(folder, pattern: str = ".*.tmp") -> list[Path]:
    """Delete the temporary files of `write_atomic` writes into ``folder`` that never finished
    (a process killed while writing leaves one behind; it can be as large as a checkpoint) and
    return their paths. Call it only when no other process writes into ``folder``."""
    leftovers = sorted(Path(folder).glob(pattern))
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return leftovers


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(folder: Path) -> None:
    # Makes the rename itself durable across a power loss; not possible on every platform.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
