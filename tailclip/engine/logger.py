"""Run logging: TensorBoard events and one JSON line per epoch in ``runs/<run>/``, and the
per-step training curves in ``runs/<run>/steps/``.

Only the main process of a distributed run writes (``enabled=False`` elsewhere makes every
method a no-op), so callers never check the rank themselves.

One unit per reader: the files (``metrics.jsonl``, ``test_*.json``, checkpoints) store mAP,
AP, AUROC and the decision metrics (CP, CR, CF1, OP, OR, OF1) as fractions in [0, 1] and say
so (``"mAP_unit": "fraction"``); what a person reads, the console and TensorBoard's charts,
shows them in percent.
"""
import contextlib
import dataclasses
import json
import math
import os
import sys
import threading
from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from tailclip.engine import visualize
from tailclip.engine.checkpoint import write_atomic
from tailclip.engine.distributed import is_main_process
from tailclip.errors import FileSystemError, TailCLIPError, filesystem_error, is_filesystem_refusal
from tailclip.thresholds import SUMMARY_NAMES

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.json"
# The per-step curves: a TensorBoard run of their own, on the global step axis. In the run
# folder, a resumed run's purge of the epochs after its checkpoint would also drop every
# step after that epoch number.
STEPS_DIR = "steps"
STEP_TAG = "train_step"
MAP_UNIT = "fraction"  # of mAP, AP, AUROC and the decision metrics in the files


def in_percent(tag: str) -> bool:
    """Whether TensorBoard shows the scalar ``tag`` in percent: mAP (any group), AUROC and
    the decision metrics (``CF1``, ``OP_top3``, ``CR_tail``, ...)."""
    name = tag.rsplit("/", 1)[-1]
    return "mAP" in name or "AUROC" in name or name.split("_", 1)[0] in SUMMARY_NAMES


def percent_scalars(record: dict) -> dict:
    """``record``'s numbers as TensorBoard scalars: mAP and AUROC times 100, others as they are."""
    return {tag: 100 * value if in_percent(tag) else value for tag, value in record.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)}


def say(message: str) -> None:
    """Print from the main process only, without breaking a tqdm progress bar.

    Each line is flushed at once (a pipe or a log file shows it when it happens). When the
    reader of the output has gone (``train.py | head``), the lines go nowhere from then on
    and the training goes on: a closed output never costs a checkpoint."""
    if not is_main_process():
        return
    try:
        tqdm.write(message)
        sys.stdout.flush()
    except BrokenPipeError:
        _discard_stdout()


def _discard_stdout() -> None:
    # Onto the same file descriptor, so that every later write, the interpreter's last
    # flush at exit included, succeeds instead of raising again.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


class RunLogger:
    """TensorBoard `SummaryWriter` plus ``metrics.jsonl`` for one run folder.

    Every epoch scalar is logged against the 1-based epoch number, every per-step scalar
    (``log_step``) against the global step in ``steps/``. When a run resumes after
    ``resume_epoch`` finished epochs and ``resume_step`` global steps, records of later
    epochs and steps (written by the interrupted run after its last checkpoint) are dropped
    from ``metrics.jsonl`` and hidden in TensorBoard, so the resumed run's points replace
    them instead of duplicating them.
    """

    def __init__(self, run_dir, enabled: bool = True, resume_epoch: int | None = None,
                 resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.writer = self.step_writer = None
        self.resume_step = resume_step
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        _quiet_tensorboard_writer_threads()
        if resume_epoch is None:  # a new run, in a folder without an earlier one (run_folder)
            self.writer = SummaryWriter(self.run_dir)
        else:
            self._truncate_metrics(resume_epoch)
            self.writer = SummaryWriter(self.run_dir, purge_step=resume_epoch + 1)

    def _truncate_metrics(self, last_epoch: int) -> None:
        # Written beside and renamed over the file: a crash during the rewrite leaves the old
        # records, never half of them.
        for leftover in self.run_dir.glob(f".{METRICS_FILE}.*.tmp"):  # of a rewrite killed before
            leftover.unlink(missing_ok=True)
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines(keepends=True)
        kept = "".join(line for line in lines if _record_epoch(line) <= last_epoch)
        write_atomic(self.metrics_path, lambda f: f.write(kept.encode()))

    @contextlib.contextmanager
    def _writing(self, path=None):
        """A lack of space (or a refused write) while writing ``path`` (None: the TensorBoard
        events) is a `FileSystemError` naming the file, alone: the libraries' tracebacks say
        nothing more."""
        try:
            yield
        except OSError as error:
            events = sorted(self.run_dir.glob("events.out.tfevents.*"), key=lambda p: p.stat().st_mtime)
            refused = filesystem_error(path or (events[-1] if events else self.run_dir), error)
            if refused is None:
                raise
            raise refused from None

    def log_config(self, config: dict) -> None:
        """Write the effective config to ``config.json`` and to TensorBoard's text tab."""
        if not self.enabled:
            return
        text = json.dumps(config, indent=2, sort_keys=True)
        with self._writing(self.run_dir / CONFIG_FILE):
            (self.run_dir / CONFIG_FILE).write_text(text + "\n")
        with self._writing():  # Markdown code block so that TensorBoard keeps the indentation.
            self.writer.add_text("config", "```\n" + text + "\n```", global_step=0)

    def log_epoch(self, epoch: int, record: dict) -> None:
        """Log ``record``'s numbers as scalars at ``epoch`` and append it to metrics.jsonl.

        Keys are TensorBoard tags (``train/loss``, ``val/mAP``, ``lr``, ...); non-numeric
        values go to the JSON line only. Epoch 0 is the evaluation before training.
        """
        if not self.enabled:
            return
        with self._writing():
            for tag, value in percent_scalars(record).items():
                self.writer.add_scalar(tag, value, global_step=epoch)
            self.writer.flush()
        line = json.dumps(json_safe({"epoch": epoch, "mAP_unit": MAP_UNIT, **record}), allow_nan=False)
        with self._writing(self.metrics_path), open(self.metrics_path, "a") as f:
            f.write(line + "\n")
            f.flush()

    def log_step(self, step: int, record: dict) -> None:
        """``record``'s numbers as the scalars ``train_step/<key>`` at the global ``step``."""
        if not self.enabled:
            return
        if self.step_writer is None:  # created at the first point: none when steps are not logged
            purge = None if self.resume_step is None else self.resume_step + 1
            self.step_writer = SummaryWriter(self.run_dir / STEPS_DIR, purge_step=purge)
        for name, value in record.items():
            self.step_writer.add_scalar(f"{STEP_TAG}/{name}", value, global_step=step)

    def flush(self) -> None:
        """Write what is logged to disk: before a checkpoint, so that a run resumed from it
        misses no step."""
        for writer in (self.writer, self.step_writer):
            if writer is not None:
                writer.flush()

    def log_evaluation(self, epoch: int, scores, targets, ap, class_names, groups,
                       class_counts=None) -> None:
        """Pictures of an evaluation: per-class AP bars and the tail classes' PR curves."""
        if not self.enabled:
            return
        with self._writing():
            visualize.log_evaluation_figures(self.writer, epoch, scores, targets, ap, class_names,
                                             groups, class_counts=class_counts)
            self.writer.flush()

    def log_hparams(self, hparams: dict, metrics: dict, epoch: int | None = None) -> None:
        """The config with the final metrics, for TensorBoard's HParams tab."""
        if not self.enabled:
            return
        with self._writing():
            visualize.log_hparams(self.writer, hparams, percent_scalars(metrics), epoch)
            self.writer.flush()

    def close(self) -> None:
        for writer in (self.writer, self.step_writer):
            if writer is not None:
                with self._writing():
                    writer.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        try:
            self.close()
        except FileSystemError:
            if exc_type is None:  # else the error on its way out says it first
                raise


def _quiet_tensorboard_writer_threads() -> None:
    """Keep the traceback of TensorBoard's writer thread that meets a full disk off the
    console: the thread hands its error to the main thread, which reports it in one line
    (`RunLogger._writing`)."""
    if getattr(threading.excepthook, "quiet_tensorboard", False):
        return
    report = threading.excepthook

    def excepthook(args):
        if not (is_filesystem_refusal(args.exc_value) and "tensorboard" in type(args.thread).__module__):
            report(args)

    excepthook.quiet_tensorboard = True
    threading.excepthook = excepthook


@dataclasses.dataclass
class StepCurves:
    """The per-step training curves: the loss, each of its terms and the learning rate,
    every ``every`` global steps (0: none). A point is that step's value, not an average, so
    a resumed run logs exactly the points of an unbroken one."""
    logger: RunLogger
    every: int

    def log(self, step: int, out: dict, lr: float) -> None:
        """After global step ``step`` (1-based), with the step's outputs ``out``."""
        if not self.every or step % self.every or not self.logger.enabled:
            return
        names = [name for name in out if name.startswith("loss")]
        values = torch.stack([out[name].detach().float() for name in names]).tolist()  # one sync
        self.logger.log_step(step, {**dict(zip(names, values)), "lr": lr})


def _record_epoch(line: str) -> float:
    # A line cut short by a crash is dropped as if it came from a later epoch.
    try:
        return json.loads(line)["epoch"]
    except (ValueError, KeyError, TypeError):
        return math.inf


def json_safe(value):
    """``value`` with every NaN or infinite float (nested in dicts and lists too) replaced
    by None: JSON has no NaN, and strict readers reject Python's ``NaN`` extension."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    return value


class MetricsFileError(TailCLIPError, ValueError):
    """A ``metrics.jsonl`` line that is not a record, other than a last line cut short."""


def read_metrics(run_dir) -> list[dict]:
    """The records of ``runs/<run>/metrics.jsonl``, in order. A last line cut short (the
    process died while appending it) is left out, as a resumed run drops it."""
    path = Path(run_dir) / METRICS_FILE
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except ValueError:
            if number < len(lines):
                raise MetricsFileError(f"{path}:{number}: not a JSON record") from None
    return records
