"""The lock of a run folder: one training at a time.

A training holds the folder's lock file (``.lock``: host, process id and start time),
created atomically and removed when the training ends, whether it finishes, fails or is
stopped by a signal (`tailclip.engine.stop_signals` turns each into an exception). A lock
whose process no longer runs on this host is stale and removed, and so is one whose process
id now belongs to a process started after the lock was written (the id was reused). A lock
that cannot be read as one (any bytes, any values) is stale once nobody has written it for
`UNFINISHED_LOCK_SECONDS`; a folder named like the lock, and a lock from another host, are
left to the user, who alone can tell whether that run is dead.
"""
import dataclasses
import datetime
import json
import os
import socket
import time
from pathlib import Path

from tailclip.engine.logger import say
from tailclip.errors import TailCLIPError, filesystem_error

LOCK_FILE = ".lock"
UNFINISHED_LOCK_SECONDS = 10


class RunFolderError(TailCLIPError):
    """A run folder that this training may not use as asked (in use, or holding a run)."""


@dataclasses.dataclass(frozen=True)
class LockOwner:
    """The training that holds a run folder, as its lock file says."""
    host: str
    pid: int
    started: str  # UTC, ISO 8601

    @classmethod
    def this_process(cls) -> "LockOwner":
        now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        return cls(socket.gethostname(), os.getpid(), now)

    def describe(self) -> str:
        return f"process {self.pid} on host {self.host} (started {self.started})"

    @classmethod
    def from_bytes(cls, data: bytes) -> "LockOwner | None":
        """The owner a lock file's bytes name; None unless they are the JSON this project
        writes, with a host name, a process id this host could have, and a start time."""
        try:
            fields = json.loads(data.decode())
            owner = cls(**fields)
            datetime.datetime.fromisoformat(owner.started)
        except (ValueError, TypeError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
            return None
        pid_type = type(owner.pid) is int and 0 < owner.pid < 2 ** 31
        return owner if pid_type and isinstance(owner.host, str) else None

    def is_gone(self, path: Path) -> bool:
        """Whether the process that wrote the lock ``path`` is known to have ended: only on
        this host, where its process id can be looked up. Our own process id in a lock that
        this process does not hold was an earlier process's (a restarted container, say)."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return path not in RunLock.held
        return not process_runs(self.pid) or self.pid_reused()

    def pid_reused(self) -> bool:
        """Whether the process now running under the lock's id started after the lock was
        written, so that it cannot have written it. Unknown (False) where the start times of
        processes cannot be read (no ``/proc``)."""
        started = process_start_time(self.pid)
        written = datetime.datetime.fromisoformat(self.started).timestamp()
        return started is not None and started > written + PID_START_SLACK_SECONDS


def process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


# A lock's start time is whole seconds and a process's start time is reckoned from the boot
# time in whole seconds: a process started this much later than its lock was not its writer.
PID_START_SLACK_SECONDS = 2


def process_start_time(pid: int) -> float | None:
    """When process ``pid`` started (seconds since the epoch), from ``/proc``; None when
    unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(line for line in Path("/proc/stat").read_text().splitlines() if line.startswith("btime "))
        ticks = int(stat.rpartition(")")[2].split()[19])  # field 22, after the command name
        return int(boot.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


class RunLock:
    """The lock file of a run folder, held by this process from `take` to `release`."""

    held: set[Path] = set()  # the lock files that this process holds

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    def take(cls, run_dir: Path) -> "RunLock":
        """Create ``run_dir``'s lock file, removing a stale one; `RunFolderError` when a
        training holds the folder (or may: a lock from another host, an unreadable one)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = cls(run_dir / LOCK_FILE)
        while not lock._create():
            if lock.path.is_dir():
                raise RunFolderError(f"{run_dir} may be in use by another training: {lock.path} is a folder, "
                                     "not a lock this project writes. If no training runs in that folder, "
                                     "delete it and start again")
            try:
                owner = lock.owner()
            except FileNotFoundError:  # released in the meantime
                continue
            if owner is None and lock._unfinished_long_ago():
                lock.path.unlink(missing_ok=True)
                say(f"removed the stale lock {lock.path}: empty or unreadable, and not being written")
                continue
            if owner is None or not owner.is_gone(lock.path):
                raise RunFolderError(lock._in_use_message(owner))
            lock.path.unlink(missing_ok=True)
            gone = ("whose process id now belongs to a process started after the lock" if owner.pid_reused()
                    else "which no longer runs")
            say(f"removed the stale lock {lock.path} of {owner.describe()}, {gone}")
        RunLock.held.add(lock.path)
        return lock

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(dataclasses.asdict(LockOwner.this_process()), f)
                f.write("\n")
        except OSError as error:  # a lock that does not say whose it is must not stay
            self.path.unlink(missing_ok=True)
            raise (filesystem_error(self.path, error) or error) from None
        return True

    def _unfinished_long_ago(self) -> bool:
        """Whether the unreadable lock file was last written long before now: a training
        writes its lock within milliseconds of creating it, so one that is still empty or
        cut short after `UNFINISHED_LOCK_SECONDS` belongs to none (it was killed, or met a
        full disk, in between)."""
        try:
            return time.time() - self.path.stat().st_mtime > UNFINISHED_LOCK_SECONDS
        except FileNotFoundError:
            return False

    def owner(self) -> LockOwner | None:
        """Who holds the lock; None when the file cannot be read as a lock (being written,
        or damaged)."""
        return LockOwner.from_bytes(self.path.read_bytes())

    def _in_use_message(self, owner: LockOwner | None) -> str:
        folder = self.path.parent
        if owner is None:
            return (f"{folder} may be in use by another training: its lock file {self.path} "
                    "cannot be read. If no training runs in that folder, delete the lock file "
                    "and start again")
        if owner.host == socket.gethostname():
            return (f"{folder} is in use by another training: {owner.describe()}. Wait for it "
                    f"to end, stop it, or train into another folder with --run-name NAME")
        return (f"{folder} is in use by another training: {owner.describe()}. A lock from "
                f"another host is never removed automatically: if that run is dead, delete "
                f"{self.path} by hand and start again")

    def release(self) -> None:
        RunLock.held.discard(self.path)
        try:
            self.path.unlink(missing_ok=True)
        except OSError as error:  # a folder made read-only: the lock stays, stale once this process ends
            say(f"warning: could not remove the lock {self.path} ({error.strerror}); the next training "
                "removes it, as this process will have ended")
