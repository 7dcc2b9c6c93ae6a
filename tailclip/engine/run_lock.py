"""The lock of a run folder: one training at a time.

A training holds the folder's lock file (``.lock``: host, process id and start time),
created atomically and removed when the training ends, whether it finishes, fails or is
stopped by a signal. A lock whose process no longer runs on this host is stale and removed;
a lock from another host is left to the user, who alone can tell whether that run is dead.
"""
import dataclasses
import datetime
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

from tailclip.engine.logger import say
from tailclip.errors import TailCLIPError, no_space_error

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

    def is_gone(self, path: Path) -> bool:
        """Whether the process that wrote the lock ``path`` is known to have ended: only on
        this host, where its process id can be looked up. Our own process id in a lock that
        this process does not hold was an earlier process's (a restarted container, say)."""
        if self.host != socket.gethostname():
            return False
        if self.pid == os.getpid():
            return path not in RunLock.held
        return not process_runs(self.pid)


def process_runs(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class RunLock:
    """The lock file of a run folder, held by this process from `take` to `release`.

    While held, SIGTERM and SIGHUP end the process through ``SystemExit`` (exit code 128 +
    the signal number), so that the lock is removed on the way out; the training loop
    handles SIGTERM itself, by saving first."""

    TERMINATING = (signal.SIGTERM, signal.SIGHUP)
    held: set[Path] = set()  # the lock files that this process holds

    def __init__(self, path: Path):
        self.path = path
        self.previous_handlers = {}

    @classmethod
    def take(cls, run_dir: Path) -> "RunLock":
        """Create ``run_dir``'s lock file, removing a stale one; `RunFolderError` when a
        training holds the folder (or may: a lock from another host, an unreadable one)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = cls(run_dir / LOCK_FILE)
        while not lock._create():
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
            say(f"removed the stale lock {lock.path} of {owner.describe()}, which no longer runs")
        RunLock.held.add(lock.path)
        lock._exit_on_termination()
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
            raise (no_space_error(self.path, error) or error) from None
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
        text = self.path.read_text()
        try:
            return LockOwner(**json.loads(text))
        except (ValueError, TypeError):
            return None

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

    def _exit_on_termination(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers exist only in the main thread
        for number in self.TERMINATING:
            self.previous_handlers[number] = signal.signal(number, _exit_on_signal)

    def release(self) -> None:
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)
        self.path.unlink(missing_ok=True)
        RunLock.held.discard(self.path)


def _exit_on_signal(signal_number, frame):
    raise SystemExit(128 + signal_number)
