"""Stop signals: the one place where a training handles what ends it from outside.

Ctrl-C (SIGINT), SIGTERM (a scheduler, ``kill``) and SIGHUP (the terminal or remote
connection closing) are alike. While a run sets up, the process ends at once, leaving the run folder
through its ``finally`` clauses (its lock removed): Ctrl-C as a KeyboardInterrupt, the others
as ``SystemExit(128 + signal)``. Once it trains (`StopSignals.defer`), a signal is a request
to stop at the next step boundary, where model and optimiser are consistent: the training
saves its newest checkpoint there and raises `TrainingInterrupted` (exit 128 + the signal's
number). A second Ctrl-C stops at once, without saving.

A DataLoader worker that dies (the out-of-memory killer's SIGKILL) is met at a step boundary
too: torch's SIGCHLD handler, which raises its error wherever the training is (in the middle
of an optimiser step, say), runs at `agree` instead, so the training can save first
(`dead_worker`).
"""
import os
import signal
import threading

from torch.utils.data._utils import signal_handling

from tailclip.engine.boundary import CommandStopped
from tailclip.engine.distributed import max_over_processes
from tailclip.engine.logger import say
from tailclip.errors import TailCLIPError


class TrainingInterrupted(CommandStopped):
    """Training stopped on a signal (Ctrl-C, SIGTERM, SIGHUP) after saving the newest checkpoint."""


class WorkerDiedError(TailCLIPError, RuntimeError):
    """A DataLoader worker died; the training saved at its last step boundary."""


def dead_worker(error: BaseException) -> str | None:
    """torch's words for a DataLoader worker that died, when ``error`` says one did."""
    text = str(error).strip().rstrip(".")
    return text if isinstance(error, RuntimeError) and text.startswith("DataLoader worker (pid") else None


def signal_name(number: int) -> str:
    return signal.Signals(number).name


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP from `__enter__` to `__exit__`, as the module says. Signal
    handlers only exist in the main thread; elsewhere a Ctrl-C stays a KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.signal_number = None
        self.deferring = False
        self.child_exited = False
        self.previous = {}

    def _handle(self, signal_number, frame):
        if os.getpid() != self.pid:
            return  # a DataLoader worker, forked with this handler: the training process stops it
        if signal_number == signal.SIGINT and (not self.deferring or self.requested):
            raise KeyboardInterrupt
        if not self.deferring:  # setting up: nothing to save
            say(f"\n{signal_name(signal_number)}: stopping while the run sets up; nothing to save")
            raise SystemExit(128 + signal_number)
        self.signal_number = signal_number
        say(f"\n{signal_name(signal_number)}: stopping after this step to save the newest checkpoint "
            "(Ctrl-C again to stop at once, without saving)")

    def _note_child_exit(self, signal_number, frame):
        self.child_exited = True

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def defer(self) -> None:
        """From now on a signal is a request to stop at a step boundary (`agree`), and so is
        a dead DataLoader worker's error."""
        self.deferring = True
        if self.previous and hasattr(signal, "SIGCHLD"):
            signal_handling._set_SIGCHLD_handler()  # torch's, once per process: held here
            torch_handler = signal.getsignal(signal.SIGCHLD)
            if callable(torch_handler):
                self.previous[signal.SIGCHLD] = signal.signal(signal.SIGCHLD, self._note_child_exit)

    def agree(self) -> bool:
        """``requested``, agreed by all processes: a signal that reached any of them stops
        all of them at this step, with the same signal number. Every process must call it
        at the same points, step boundaries. Raises torch's error of a DataLoader worker
        that died since the last call."""
        if self.child_exited:
            self.child_exited = False
            self.previous[signal.SIGCHLD](signal.SIGCHLD, None)
        self.signal_number = max_over_processes(self.signal_number or 0) or None
        return self.requested

    def __enter__(self):
        self.pid = os.getpid()
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
