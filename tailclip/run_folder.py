"""The run folder ``<run_dir>/<run name>/``: who may write into it, what its checkpoints hold
and how a run resumes from them.

One training at a time: a training holds the folder's lock file (``.lock``: host, process id
and start time), created atomically and removed when the training ends, whether it finishes,
fails or is stopped by a signal. A lock whose process no longer runs on this host is stale
and removed; a lock from another host is left to the user, who alone can tell whether that
run is dead. A new (not resumed) training refuses a folder that holds an earlier run unless
told to overwrite it, and then deletes that run's files first.

A training checkpoint is enough on its own to rebuild and use the model (weights, config,
class names, label prompts, backbone name) and, for ``--resume``, to continue exactly where
the run stopped (optimiser, schedule, scaler, progress, the unfinished epoch's meter and the
random-number states). The file format itself (atomic writes, safe loading) is
`tailclip.checkpoint`'s.
"""
import contextlib
import dataclasses
import datetime
import json
import math
import os
import signal
import socket
import threading
import time
from pathlib import Path

from tailclip.checkpoint import FORMAT, VERSION, restore_rng_states, with_checksum
from tailclip.config import PROMPT_MODES, Config, ConfigError
from tailclip.distributed import main_process_outcome, rank_and_world
from tailclip.errors import TailCLIPError, no_space_error
from tailclip.factory import build_model
from tailclip.logger import CONFIG_FILE, MAP_UNIT, METRICS_FILE, STEPS_DIR, say
from tailclip.model import TailCLIP
from tailclip.prompt_learning import PromptTailCLIP, load_trainable_state_dict, trainable_state_dict

BEST_MAP_CHECKPOINT = "best_valid_mAP.pt"
BEST_TAIL_CHECKPOINT = "best_valid_mAP_tail.pt"
NEWEST_CHECKPOINT = "newest_train_checkpoint.pt"
LOCK_FILE = ".lock"
UNFINISHED_LOCK_SECONDS = 10
# A folder holds a run once any of these exists; --overwrite deletes them and the run's other
# outputs (its config, unfinished writes, test.py's reports, charts and thresholds, compare.py's
# comparison and the authors' runs it exported).
RUN_RECORDS = ("*.pt", METRICS_FILE, "events.out.tfevents.*", f"{STEPS_DIR}/events.out.tfevents.*")
RUN_OUTPUTS = (*RUN_RECORDS, CONFIG_FILE, ".*.pt.*.tmp", f".{METRICS_FILE}.*.tmp", "test_*.json",
               "per_class_ap*.png", "thresholds_*.json", "comparison.md", "comparison.json", "comparison.png",
               "authors/*/events.out.tfevents.*")


class RunFolderError(TailCLIPError):
    """A run folder that this training may not use as asked (in use, or holding a run)."""


@dataclasses.dataclass
class TrainState:
    """Progress of a run; saved in every checkpoint."""
    epoch: int = 0  # finished epochs
    step_in_epoch: int = 0  # steps of epoch `epoch` already taken (a run stopped mid-epoch)
    global_step: int = 0
    nonfinite_steps: int = 0
    last_loss: float = math.nan  # of the last step taken (for the progress bar)
    best_mAP: float = -math.inf
    best_mAP_epoch: int = 0
    best_mAP_tail: float = -math.inf
    best_mAP_tail_epoch: int = 0
    start_mAP: float | None = None  # before training: the untrained (or zero-shot) model
    last_metrics: dict = dataclasses.field(default_factory=dict)


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
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False


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


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint that ``--resume`` continues from: ``newest_train_checkpoint.pt``, or,
    for a run that never wrote it (its first write failed, or ``save_newest_checkpoint =
    False``), the most recent best checkpoint (each holds the whole training state of its
    epoch); None when the folder holds no checkpoint."""
    if (run_dir / NEWEST_CHECKPOINT).is_file():
        return run_dir / NEWEST_CHECKPOINT
    best = [run_dir / name for name in (BEST_MAP_CHECKPOINT, BEST_TAIL_CHECKPOINT) if (run_dir / name).is_file()]
    return max(best, key=lambda path: path.stat().st_mtime_ns) if best else None


RESTART_ADVICE = "start the run again with --overwrite (deletes its logs)"


def how_to_go_on(run_dir: Path) -> str:
    """What the user can do with the run in ``run_dir``, as its files allow."""
    if resume_checkpoint(run_dir) is not None:
        return "continue it with --resume"
    return f"{RESTART_ADVICE}: it has no checkpoint to resume from"


def run_files(run_dir: Path, patterns=RUN_RECORDS) -> list[Path]:
    """The files in ``run_dir`` that match ``patterns``, sorted."""
    return sorted({path for pattern in patterns for path in run_dir.glob(pattern) if path.is_file()})


def _claim(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    lock = RunLock.take(run_dir)
    try:
        if not resume:
            _clear_for_new_run(run_dir, overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def _clear_for_new_run(run_dir: Path, overwrite: bool) -> None:
    earlier = run_files(run_dir)
    if earlier and not overwrite:
        names = ", ".join(path.name for path in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        if resume_checkpoint(run_dir) is None:
            raise RunFolderError(
                f"{run_dir} holds an earlier run ({names}) that stopped before its first "
                f"checkpoint; nothing was changed. To go on, {RESTART_ADVICE}, or start another "
                "run with --run-name NAME")
        raise RunFolderError(
            f"{run_dir} holds an earlier run ({names}); nothing was changed. Continue it with "
            "--resume, start another run with --run-name NAME, or replace it with --overwrite "
            "(deletes its checkpoints and logs)")
    removed = run_files(run_dir, RUN_OUTPUTS) if earlier else []
    for path in removed:
        path.unlink()
    if removed:
        say(f"--overwrite: deleted the earlier run's {len(removed)} files in {run_dir}")


@contextlib.contextmanager
def claimed_run_folder(run_dir: Path, resume: bool, overwrite: bool):
    """Hold ``run_dir`` for one training: its lock taken (by the main process only, under
    torchrun; the others wait for it), and for a new run, the folder checked, and an
    earlier run's files deleted when ``overwrite``. A `RunFolderError` is raised in every
    process. The folders the claim created are removed again when the training leaves them
    empty: a launch that failed before its run started leaves no trace."""
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    lock = main_process_outcome(lambda: _claim(run_dir, resume, overwrite))
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
            _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove each folder, innermost first, as long as it is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # holds the run's files (or is gone)
            return


def check_checkpoint_matches(checkpoint: dict, cfg: Config, class_names: list[str], path) -> None:
    """Refuse a checkpoint trained for other classes or another architecture than ``cfg``."""
    saved = checkpoint["config"]
    if checkpoint["class_names"] != list(class_names):
        raise ConfigError(
            f"{path} was trained on {len(checkpoint['class_names'])} other classes "
            f"({', '.join(checkpoint['class_names'][:5])}, ...) than the config's dataset "
            f"{cfg.dataset!r} ({len(class_names)} classes: {', '.join(class_names[:5])}, ...)")
    for key in ("model_name", "size", "finetune"):
        if saved.get(key) != getattr(cfg, key):
            raise ConfigError(f"{path} holds a model with {key} = {saved.get(key)!r}, "
                              f"but the config has {key} = {getattr(cfg, key)!r}")


def saves_trained_parameters_only(cfg: Config) -> bool:
    """Whether checkpoints hold only the trained parameters (`trainable_state_dict`, a few
    hundred KB): in the prompt modes on OpenAI's weights, which are rebuilt from the backbone
    name. A random backbone (``pretrained = False``) cannot be, so its checkpoints hold
    every weight, as full fine-tuning's do."""
    return cfg.finetune in PROMPT_MODES and cfg.pretrained


def model_state(model: TailCLIP, cfg: Config) -> dict:
    """A checkpoint's ``model`` entry and its ``model_format``, "trainable" or "state_dict"."""
    if saves_trained_parameters_only(cfg):
        return {"model_format": "trainable", "model": trainable_state_dict(model)}
    return {"model_format": "state_dict", "model": model.state_dict()}


def load_model_state(model: TailCLIP, checkpoint: dict, path) -> None:
    """Load the checkpoint's weights, naming the file when they do not fit the model."""
    try:
        if checkpoint.get("model_format") == "trainable":
            if not isinstance(model, PromptTailCLIP):
                raise ValueError("it holds prompts, and the config asks for full fine-tuning")
            load_trainable_state_dict(model, checkpoint["model"])
        else:
            model.load_state_dict(checkpoint["model"])
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"{path}: the weights do not fit the model built from the config: "
                          f"{error}") from None


def trained_model(checkpoint: dict, cfg: Config, label_prompts: list[str], path) -> TailCLIP:
    """The checkpoint's model (on the CPU) for ``cfg``: prompts saved alone go on top of the
    pretrained backbone they were trained on (loaded, or downloaded once, by name); other
    checkpoints hold every weight, so the backbone starts from random ones."""
    pretrained = checkpoint.get("model_format") == "trainable"
    model = build_model(cfg, label_prompts, pretrained=pretrained)
    load_model_state(model, checkpoint, path)
    return model


def model_from_checkpoint(checkpoint: dict, path="checkpoint") -> tuple[TailCLIP, Config]:
    """Rebuild the trained model (on the CPU, eval mode) from a checkpoint alone."""
    cfg = Config.from_dict(checkpoint["config"], source=str(path))
    return trained_model(checkpoint, cfg, checkpoint["label_prompts"], path).eval(), cfg


def training_checkpoint(cfg: Config, data, trainer, state: TrainState, meter, rng: list[dict]) -> dict:
    """Everything needed to resume training, or to use the model without the data; ``rng``
    holds the random-number states of every process, by rank (`checkpoint.rng_states`)."""
    return with_checksum({
        "format": FORMAT,
        "version": VERSION,
        **model_state(trainer.model, cfg),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "state": dataclasses.asdict(state),
        "mAP_unit": MAP_UNIT,
        "epoch_progress": meter.state_dict() if state.step_in_epoch else None,
        "label_embeddings": trainer.model.cached_label_emb if state.step_in_epoch else None,
        "config": cfg.to_dict(),
        "backbone": cfg.model_name,
        "class_names": list(data.class_names),
        "label_prompts": list(data.label_prompts),
        "groups": data.groups,
        "rng": rng,
    })


def restore_training(checkpoint: dict, trainer, meter) -> TrainState:
    """Restore model, optimiser, scaler, progress and this process's random states; the
    schedule is the caller's to rebuild at the epoch reached (`optim.build_scheduler`)."""
    load_model_state(trainer.model, checkpoint, NEWEST_CHECKPOINT)
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    state = TrainState(**checkpoint["state"])
    if checkpoint["epoch_progress"] is not None:
        meter.load_state_dict(checkpoint["epoch_progress"], trainer.device)
    if checkpoint["label_embeddings"] is not None:
        trainer.model.cached_label_emb = checkpoint["label_embeddings"].to(trainer.device)
    _restore_process_rng(checkpoint["rng"])
    return state


def _restore_process_rng(states: list[dict] | dict) -> None:
    """This process's own random states: a resumed run draws (random flips of the JPEG
    path, ...) as an unbroken one. With another number of processes than the run had, the
    draws differ; each process takes the states of rank ``rank % saved processes``."""
    states = [states] if isinstance(states, dict) else states  # saved by one process, before per-process states
    rank, world = rank_and_world()
    if world != len(states):
        say(f"resume: the run had {len(states)} process(es), now {world}: random draws (the "
            "flips of the JPEG path) differ from an unbroken run")
    restore_rng_states(states[rank % len(states)])


# Options a resumed run may take from the command line. Each changes how the run goes on,
# not what it has trained so far: `epochs` and `lr` rebuild the cosine schedule from the
# epoch reached (`optim.build_scheduler`); the others choose where and how fast it runs,
# which checkpoints it keeps and how many non-finite steps it tolerates. Every other option
# (model, data, loss, batch size, optimiser, seed, ...) is the run's own and cannot change.
RESUMABLE_OPTIONS = ("epochs", "lr", "device", "num_threads", "num_workers", "eval_batch_size",
                     "precision", "tf32", "compile", "grad_checkpointing", "image_cache", "run_dir",
                     "save_best_mAP_checkpoint", "save_best_tail_mAP_checkpoint",
                     "save_newest_checkpoint", "max_nonfinite_steps")


def resumed_config(checkpoint: dict, cfg: Config, given, path) -> Config:
    """The config a resumed run trains with: the run's own (saved in its checkpoint ``path``),
    with the values of ``cfg`` for the options named in ``given`` (those set on the command
    line now; None: every option of ``cfg``) and its ``run_dir`` (where the run is now).

    A given option outside `RESUMABLE_OPTIONS` whose value differs from the run's is a
    `ConfigError` naming it. Changes are reported in one line each.
    """
    saved = Config.from_dict(checkpoint["config"], source=str(path))
    given = set(cfg.to_dict() if given is None else given) | {"run_dir"}
    changed = {key for key in given if getattr(cfg, key) != getattr(saved, key)}
    fixed = sorted(changed - set(RESUMABLE_OPTIONS))
    if fixed:
        key = fixed[0]
        raise ConfigError(
            f"cannot resume {Path(path).parent} with {key} = {getattr(cfg, key)!r}: the run has "
            f"{key} = {getattr(saved, key)!r}, and {key} cannot change during a run (a resumed run "
            f"may change {', '.join(RESUMABLE_OPTIONS[:2])} and how it runs: "
            f"{', '.join(RESUMABLE_OPTIONS[2:])}); train a new run with --run-name NAME")
    resumed = dataclasses.replace(saved, **{key: getattr(cfg, key) for key in changed})
    for key in sorted(changed - {"run_dir"}):
        say(f"resume: {key} = {getattr(resumed, key)!r} from now on (the run had {getattr(saved, key)!r})")
    return resumed
