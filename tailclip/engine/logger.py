"""Run logging: TensorBoard events and one JSON line per epoch in ``runs/<run>/``, and the
per-step training curves in ``runs/<run>/steps/``.

The run's checkpoints are its record (its id and every epoch's record, in
`training_state.TrainState`); ``metrics.jsonl`` and ``config.json`` are views of it, carry
its id, and are rewritten from it whenever they are behind it or damaged (`restore_metrics`,
`restore_config`): on every ``--resume``, and by a sweep before it reports.

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
import uuid
from pathlib import Path

import torch
from tqdm import tqdm

from tailclip.config import RUN_ID
from tailclip.engine.distributed import is_main_process
from tailclip.engine.files import write_json, write_text
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


def new_run_id() -> str:
    """The id a run gets at its start, which its checkpoints and files carry."""
    return uuid.uuid4().hex


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
    """TensorBoard `SummaryWriter` plus ``metrics.jsonl`` and ``config.json`` for one run
    folder: the views of the run ``run_id`` whose epoch records are ``records`` (the list
    that the checkpoints save; `log_epoch` appends to it).

    Every epoch scalar is logged against the 1-based epoch number, every per-step scalar
    (``log_step``) against the global step in ``steps/``. When a run resumes after
    ``resume_epoch`` finished epochs and ``resume_step`` global steps, ``metrics.jsonl`` is
    rewritten from ``records`` (the lines of later epochs, written by the interrupted run
    after its last checkpoint, dropped; lines lost or damaged restored), and the later
    points are hidden in TensorBoard, so the resumed run's points replace them instead of
    duplicating them. A checkpoint from before records were kept resumes with empty
    ``records``: they are taken from ``metrics.jsonl`` as it is.
    """

    def __init__(self, run_dir, enabled: bool = True, run_id: str = "", records: list[dict] | None = None,
                 resume_epoch: int | None = None, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.run_id = run_id
        self.records = [] if records is None else records
        self.writer = self.step_writer = None
        self.resume_step = resume_step
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        _quiet_tensorboard_writer_threads()
        # Imported here, with TensorBoard's protocol buffers: a command line that stops on a bad
        # input before a run starts does not wait for them.
        from torch.utils.tensorboard import SummaryWriter

        if resume_epoch is None:  # a new run, in a folder without an earlier one (run_folder)
            self.writer = SummaryWriter(self.run_dir)
            return
        if not self.records:
            self.records += [record for record in _readable_records(self.metrics_path)
                             if record["epoch"] <= resume_epoch]
        with self._writing(self.metrics_path):
            restore_metrics(self.run_dir, self.records, later=False)
        self.writer = SummaryWriter(self.run_dir, purge_step=resume_epoch + 1)

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
        """Write the effective config with the run's id to ``config.json``, and the config to
        TensorBoard's text tab."""
        if not self.enabled:
            return
        with self._writing(self.run_dir / CONFIG_FILE):
            write_config(self.run_dir, config, self.run_id)
        text = json.dumps(config, indent=2, sort_keys=True)
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
        entry = json_safe({"epoch": epoch, RUN_ID: self.run_id, "mAP_unit": MAP_UNIT, **record})
        self.records.append(entry)
        # Appended, not rewritten: a crash can cut this line short or lose it, and the next
        # resume restores it from the checkpoint, which is written after it.
        with self._writing(self.metrics_path), open(self.metrics_path, "a") as f:
            f.write(metrics_text([entry]))
            f.flush()

    def log_step(self, step: int, record: dict) -> None:
        """``record``'s numbers as the scalars ``train_step/<key>`` at the global ``step``."""
        if not self.enabled:
            return
        if self.step_writer is None:  # created at the first point: none when steps are not logged
            from torch.utils.tensorboard import SummaryWriter  # imported by __init__ already

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
        from tailclip.engine import visualize  # matplotlib: imported when the first figure is drawn

        with self._writing():
            visualize.log_evaluation_figures(self.writer, epoch, scores, targets, ap, class_names,
                                             groups, class_counts=class_counts)
            self.writer.flush()

    def log_hparams(self, hparams: dict, metrics: dict, epoch: int | None = None) -> None:
        """The config with the final metrics, for TensorBoard's HParams tab."""
        if not self.enabled:
            return
        from tailclip.engine import visualize  # matplotlib: imported when the first figure is drawn

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


def metrics_text(records: list[dict]) -> str:
    """``records`` as the lines of ``metrics.jsonl``."""
    return "".join(json.dumps(record, allow_nan=False) + "\n" for record in records)


def _readable_records(path: Path) -> list[dict]:
    """The lines of ``path`` that are epoch records, in order; the others left out."""
    records = []
    for line in path.read_text(errors="replace").splitlines() if path.is_file() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("epoch"), int):
            records.append(record)
    return records


def restore_metrics(run_dir, records: list[dict], later: bool) -> None:
    """Make ``metrics.jsonl`` begin with ``records`` (a checkpoint's), rewriting it whole
    when it does not, and saying so when it lacked or held damaged any of them. With
    ``later``, the readable records of later epochs in the file are kept after them (the
    epochs a run logged after its last checkpoint that was kept, when it saves no newest
    one); without, they are dropped (a resumed run logs them again)."""
    path = Path(run_dir) / METRICS_FILE
    expected = metrics_text(records)
    text = path.read_text(errors="replace") if path.is_file() else ""
    if text.startswith(expected) and (later or len(text) == len(expected)):
        return 0
    lines = set(text.splitlines(keepends=True))
    lacking = sum(line not in lines for line in expected.splitlines(keepends=True))
    last = records[-1]["epoch"] if records else -1
    kept = [record for record in _readable_records(path) if record["epoch"] > last] if later else []
    write_text(path, expected + metrics_text(kept))
    if lacking:
        say(f"{path} lacked or held damaged {lacking} of the {len(records)} records in the run's checkpoint: "
            "rewritten from it")


def write_config(run_dir, config: dict, run_id: str) -> None:
    """``config.json``: the run's effective ``config`` with its id."""
    write_json(Path(run_dir) / CONFIG_FILE, {**config, RUN_ID: run_id}, sort_keys=True)


def read_run_id(run_dir) -> str | None:
    """The id of the run that wrote the files in ``run_dir`` (its ``config.json``, else its
    first ``metrics.jsonl`` record), None when they carry none."""
    config = _read_json(Path(run_dir) / CONFIG_FILE)
    if isinstance(config, dict) and config.get(RUN_ID):
        return config[RUN_ID]
    return next((record[RUN_ID] for record in _readable_records(Path(run_dir) / METRICS_FILE)
                 if record.get(RUN_ID)), None)


def restore_config(run_dir, config: dict, run_id: str) -> bool:
    """Rewrite ``config.json`` from a checkpoint's ``config`` when it is missing, damaged or
    of another run; whether it was."""
    saved = _read_json(Path(run_dir) / CONFIG_FILE)
    if isinstance(saved, dict) and saved.get(RUN_ID) == run_id:
        return False
    write_config(run_dir, config, run_id)
    return True


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


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
