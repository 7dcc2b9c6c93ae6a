"""Training TailCLIP: the loop that ``train.py`` runs.

One epoch: balanced sampling (seeded by (seed, epoch)), mixed-precision forward, the paper's
objective, AdamW with a cosine schedule stepped once per epoch, then an evaluation of the
test split (the paper's "valid" split); one evaluation before the first epoch gives the
starting point (the untrained or zero-shot model) that the final summary compares with.
Every epoch is logged to TensorBoard and ``metrics.jsonl`` and checkpointed atomically, and
every ``log_every_steps`` steps the loss, its terms and the learning rate go to TensorBoard
on the global step axis (``logger.StepCurves``);
``resume=True`` continues from ``newest_train_checkpoint.pt`` with the same subsequent losses
as an unbroken run.

Crash safety: one training at a time holds the run folder, and a new run never overwrites an
earlier one unless asked (``tailclip.engine.run_folder``). A non-finite loss, or an evaluation with
non-finite scores, stops the run (``NonFiniteLossError``) without writing any checkpoint of
that epoch; Ctrl-C (or SIGTERM) finishes the current step, saves the newest checkpoint and
raises ``TrainingInterrupted``.

Under torchrun (``tailclip.engine.distributed``) every process trains its slice of each global batch
in ``DistributedDataParallel`` and computes the single-process loss of the whole batch; the
training metrics see the whole batch, evaluation is sharded and gathered, and only rank 0
prints, logs and writes checkpoints.
"""
import dataclasses
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

import clip
from tailclip.config import Config, resolve_path
from tailclip.data import DataBundle, build_data
from tailclip.engine.batches import SplitBatches, build_split_batches
from tailclip.engine.checkpoint import load_checkpoint, rng_states, save_atomic
from tailclip.engine.distributed import (
    DistInfo,
    all_processes_objects,
    any_over_processes,
    barrier,
    distribute_model,
    global_batch_objective,
    init_distributed,
    is_main_process,
    main_process_first,
    max_over_processes,
)
from tailclip.engine.evaluation import Evaluation, NonFiniteScoresError, evaluate_model, val_line, val_record
from tailclip.engine.files import remove_partial_writes
from tailclip.engine.logger import RunLogger, StepCurves, say
from tailclip.engine.optim import build_optimizer, build_scheduler
from tailclip.engine.precision import autocast, grad_scaler, resolve_precision, set_tf32
from tailclip.engine.progress import show_progress
from tailclip.engine.run_folder import (
    BEST_MAP_CHECKPOINT,
    BEST_TAIL_CHECKPOINT,
    NEWEST_CHECKPOINT,
    RESTART_ADVICE,
    check_same_run,
    claimed_run_folder,
    how_to_go_on,
    restore_run_files,
    resume_checkpoint,
    run_files,
)
from tailclip.engine.saved_model import check_checkpoint_matches
from tailclip.engine.training_state import (
    TrainState,
    checkpoint_as,
    restore_training,
    resumed_config,
    training_checkpoint,
)
from tailclip.errors import MissingFileError, NoSpaceError, TailCLIPError
from tailclip.factory import build_model, build_objective, seed_everything, set_cpu_threads
from tailclip.metrics import evaluate, scores_from_logits
from tailclip.model import TailCLIP
from tailclip.thresholds import no_threshold_reason
from tailclip.wording import count, percent


class NonFiniteLossError(TailCLIPError, RuntimeError):
    """The loss became NaN or infinite more often than ``max_nonfinite_steps`` allows, or an
    evaluation's scores did."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal (Ctrl-C / SIGTERM) after saving the newest checkpoint."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


class EpochMeter:
    """One epoch's loss sums and training scores, kept on the device (no per-step sync)."""

    def __init__(self):
        self.loss_sums: dict[str, torch.Tensor] = {}
        self.images = 0
        self.scores: list[torch.Tensor] = []
        self.targets: list[torch.Tensor] = []

    def update(self, out: dict, targets: torch.Tensor, score_kind: str) -> None:
        # With several processes, the whole global batch (`GlobalBatchObjective`'s outputs):
        # every process keeps the single-process meter.
        logits, targets = out.get("global_logits", out["logits"]), out.get("global_targets", targets)
        count = targets.shape[0]
        for name, value in out.items():
            if name.startswith("loss"):
                self.loss_sums[name] = self.loss_sums.get(name, 0) + value.detach().float() * count
        self.images += count
        self.scores.append(scores_from_logits(logits.detach().float(), score_kind))
        self.targets.append(targets)

    def state_dict(self) -> dict:
        return {"loss_sums": {k: v.cpu() for k, v in self.loss_sums.items()}, "images": self.images,
                "scores": [torch.cat(self.scores).cpu()] if self.scores else [],
                "targets": [torch.cat(self.targets).cpu()] if self.targets else []}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.loss_sums = {k: v.to(device) for k, v in state["loss_sums"].items()}
        self.images = state["images"]
        self.scores = [t.to(device) for t in state["scores"]]
        self.targets = [t.to(device) for t in state["targets"]]

    def summary(self, groups) -> dict:
        """``train/loss`` (and each term) per image, ``train/mAP*`` and ``train/AUROC``."""
        if not self.images:
            return {}
        record = {f"train/{name}": (total / self.images).item() for name, total in self.loss_sums.items()}
        metrics = evaluate(torch.cat(self.scores).cpu(), torch.cat(self.targets).cpu(), groups)
        record.update({f"train/{name}": value for name, value in metrics.items() if name != "AP"})
        return record


class _StopOnSignal:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM into a request to stop at the next step
    boundary, where the model and optimiser are consistent and can be saved; a second
    Ctrl-C interrupts at once. Signal handlers only exist in the main thread; elsewhere a
    Ctrl-C stays a plain KeyboardInterrupt."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signal_number = None
        self.previous = {}

    def _handle(self, signal_number, frame):
        if os.getpid() != self.pid:
            return  # a DataLoader worker, forked with this handler: the training process stops it
        if self.signal_number is not None and signal_number == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal_number = signal_number
        say(f"\n{signal.Signals(signal_number).name}: stopping after this step to save "
            f"{NEWEST_CHECKPOINT} (Ctrl-C again to stop at once, without saving)")

    @property
    def requested(self) -> bool:
        return self.signal_number is not None

    def agree(self) -> bool:
        """``requested``, agreed by all processes: a signal that reached any of them stops
        all of them at this step, with the same signal number. Every process must call it
        at the same points."""
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


@dataclasses.dataclass
class Trainer:
    """What one training step needs."""
    model: TailCLIP
    forward: torch.nn.Module  # the model (in DistributedDataParallel with several processes),
    # or its torch.compile'd version
    objective: torch.nn.Module  # the loss of a step's outputs (of the global batch with several
    # processes), or its torch.compile'd version
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    precision: str
    device: torch.device
    max_nonfinite_steps: int


def compile_forward(forward: torch.nn.Module, backend: str = "inductor") -> torch.nn.Module:
    """``forward`` through ``torch.compile``, one graph per input shape: the training batches'
    caption lengths are a few fixed ones (``batches.COMPILED_CAPTION_LENGTHS``), so each
    gets kernels for its own shape, not the shape-generic graph of a second length."""
    return torch.compile(forward, backend=backend, dynamic=False)


def train_step(trainer: Trainer, images, targets, tokens, state: TrainState, epoch: int) -> dict | None:
    """One optimisation step; returns the class logits and the objective's outputs (the loss
    also as a number in ``state.last_loss``), or None for a skipped non-finite loss."""
    with autocast(trainer.precision, trainer.device):
        outputs = trainer.forward(images, tokens if trainer.objective.uses_captions else None)
        out = {"logits": outputs["logits"], **trainer.objective(**outputs, targets=targets)}
    trainer.scaler.scale(out["loss"]).backward()
    # The step's one wait for the device, once the backward pass is queued: a non-finite
    # loss leaves only non-finite gradients behind, dropped here before any weight changes.
    # With several processes the loss is that of the global batch, so all agree.
    state.last_loss = out["loss"].item()
    if not math.isfinite(state.last_loss):
        state.nonfinite_steps += 1
        message = (f"non-finite loss ({state.last_loss}) at epoch {epoch + 1}, step "
                   f"{state.step_in_epoch + 1} (global step {state.global_step + 1})")
        if state.nonfinite_steps > trainer.max_nonfinite_steps:
            raise NonFiniteLossError(
                f"{message}: stopping after {state.nonfinite_steps} non-finite step(s) "
                f"(max_nonfinite_steps = {trainer.max_nonfinite_steps}); no checkpoint was written")
        say(f"{message}: step skipped ({state.nonfinite_steps} of {trainer.max_nonfinite_steps} allowed)")
        trainer.optimizer.zero_grad(set_to_none=True)
        return None
    trainer.scaler.step(trainer.optimizer)
    trainer.scaler.update()
    trainer.optimizer.zero_grad(set_to_none=True)
    return out


def train_one_epoch(trainer: Trainer, batches: SplitBatches, state: TrainState, meter: EpochMeter,
                    epoch: int, epochs: int, stop: _StopOnSignal | None = None,
                    curves: StepCurves | None = None) -> None:
    """Train on the epoch's batches from ``state.step_in_epoch`` on, updating ``state`` and
    ``meter`` and logging the per-step ``curves``; returns early (with the state at a step
    boundary) when ``stop`` is requested."""
    model = trainer.model
    model.train()
    if model.label_embedding_mode == "per_epoch" and state.step_in_epoch == 0:
        with autocast(trainer.precision, trainer.device):
            model.refresh_label_embeddings()
    lr = trainer.optimizer.param_groups[0]["lr"]
    bar = tqdm(total=batches.steps_per_epoch(), initial=state.step_in_epoch, leave=False,
               desc=f"epoch {epoch + 1}/{epochs}", unit="step",
               disable=not (is_main_process() and show_progress()), dynamic_ncols=True)
    started, seen = time.perf_counter(), 0
    for batch in batches.batches(trainer.device, epoch, state.step_in_epoch):
        # No batch: none of the step's images could be read; the step still counts, so that
        # a resume starts after it.
        out = None if batch is None else train_step(trainer, *batch[:3], state, epoch)
        if out is not None:
            targets = batch[1]
            meter.update(out, targets, model.score_kind)
            seen += len(out.get("global_targets", targets))
            bar.set_postfix(loss=f"{state.last_loss:.4f}", lr=f"{lr:.2e}",
                            img_s=f"{seen / (time.perf_counter() - started):.1f}", refresh=False)
        state.step_in_epoch += 1
        state.global_step += 1
        if out is not None and curves is not None:
            curves.log(state.global_step, out, lr)
        bar.update()
        if stop is not None and stop.agree():
            break
    bar.close()


def _epoch_line(epoch: int, epochs: int, record: dict) -> str:
    line = (f"epoch {epoch}/{epochs}  train loss {record.get('train/loss', math.nan):.4f}  "
            f"{val_line(record)}  {record['time/epoch_s']:.1f} s, "
            f"{record['time/train_images_per_s']:.0f} img/s")
    if "data/unreadable_train_images" in record:
        line += (f"  unreadable images left out: {record['data/unreadable_train_images']} train, "
                 f"{record['data/unreadable_test_images']} test")
    return line


def train(cfg: Config, run_name: str, resume: bool = False, overwrite: bool = False,
          on_epoch: Callable[[int, dict], None] | None = None, given_options=None) -> dict:
    """Train per ``cfg`` into ``<cfg.run_dir>/<run_name>/``; returns a summary of the run.

    A new run refuses a folder that holds an earlier run (any checkpoint, ``metrics.jsonl``
    or TensorBoard events) unless ``overwrite``, which deletes that run's files first;
    ``resume`` continues the run from its newest checkpoint, and changes nothing when that
    run is complete. A resumed run trains with its own saved config, changed only in the
    ``given_options`` (the names of the options set on the command line; None: every
    option) to ``cfg``'s values, where `training_state.resumed_config` allows it. Either way a
    folder that another training holds is refused (``RunFolderError``, before anything in
    it changes).

    ``on_epoch(epoch, record)`` is called after each epoch's checkpoints are written, with
    the epoch's ``metrics.jsonl`` record; an exception it raises (a search pruning the run)
    leaves the run resumable from that epoch.

    Raises ``NonFiniteLossError`` (nothing of that epoch saved) and ``TrainingInterrupted``
    (newest checkpoint saved); ``train.py`` turns them into exit codes. Under torchrun, joins
    the process group (``init_distributed``; the caller ends it with ``distributed.cleanup``).
    """
    if resume and overwrite:
        raise ValueError("resume and overwrite exclude each other")
    run_dir = resolve_path(cfg.run_dir) / run_name
    processes = init_distributed(cfg.device)
    checkpoint = None
    if resume:
        path = resume_checkpoint(run_dir)
        if path is None:
            hint = (f"; the run stopped before its first checkpoint: {RESTART_ADVICE}"
                    if run_files(run_dir) else "")
            raise MissingFileError(f"cannot resume: no {run_dir / NEWEST_CHECKPOINT}{hint}")
        if path.name != NEWEST_CHECKPOINT:
            say(f"resume: no {NEWEST_CHECKPOINT} in {run_dir}; continuing from {path.name}")
        checkpoint = load_checkpoint(path)
        check_same_run(run_dir, checkpoint, path)
        cfg = resumed_config(checkpoint, cfg, given_options, path)
        finished = TrainState(**checkpoint["state"])
        if finished.epoch >= cfg.epochs:
            restore_run_files(run_dir, checkpoint, path)
            say(f"{run_dir} is complete: {finished.epoch} of {cfg.epochs} epochs; nothing to do")
            return _summary(finished, run_dir)
    with claimed_run_folder(run_dir, resume, overwrite):
        try:
            return _train_in(run_dir, cfg, checkpoint, processes, on_epoch)
        except NoSpaceError as error:  # the files written before are intact
            raise NoSpaceError(f"{error}; free some space, then {how_to_go_on(run_dir)}") from None


@dataclasses.dataclass
class Run:
    """A training's parts, as `_set_up` builds them; the loop's functions share them."""
    cfg: Config
    run_dir: Path
    data: DataBundle
    trainer: Trainer
    objective: torch.nn.Module  # the single-process objective, for evaluation
    train_batches: SplitBatches
    test_batches: SplitBatches
    logger: RunLogger
    state: TrainState
    meter: EpochMeter


def _train_in(run_dir: Path, cfg: Config, checkpoint: dict | None, processes: DistInfo,
              on_epoch: Callable[[int, dict], None] | None) -> dict:
    """`train`, in a run folder that this training holds."""
    run = _set_up(run_dir, cfg, checkpoint, processes)
    with run.logger, _StopOnSignal() as stop:
        if checkpoint is None:  # where training starts from: epoch 0 of the logs and the summary
            _evaluate_start(run)
            if stop.agree():
                raise _stop_here(run, stop)
        for epoch in range(run.state.epoch, cfg.epochs):
            record = _train_epoch(run, epoch, stop)
            if on_epoch is not None:
                on_epoch(run.state.epoch, record)
            if stop.agree() and run.state.epoch < cfg.epochs:
                raise _stop_here(run, stop)
        summary = _summary(run.state, run_dir)
        run.logger.log_hparams(cfg.to_dict(), {f"hparam/{key}": value for key, value in summary.items()
                                               if "mAP" in key and "epoch" not in key})
        if stop.agree():  # during the last epoch: nothing is left to save, but the caller stops
            raise TrainingInterrupted(
                f"stopped by {signal.Signals(stop.signal_number).name} during the last epoch, once "
                f"it was saved: {run_dir} is complete ({run.state.epoch} epochs)", stop.signal_number)
    say(_final_line(run.state, summary))
    return summary


def _set_up(run_dir: Path, cfg: Config, checkpoint: dict | None, processes: DistInfo) -> Run:
    """The data, model, objective, optimiser, batches and logger of a run, restored from
    ``checkpoint`` when it resumes."""
    device = processes.device
    precision = resolve_precision(cfg.precision, device)
    set_tf32(cfg.tf32, device)
    set_cpu_threads(cfg.num_threads)
    seed_everything(cfg.seed)
    with main_process_first():  # one process per node generates the data, downloads weights
        data = build_data(cfg)
        if checkpoint is not None:
            check_checkpoint_matches(checkpoint, cfg, data.class_names, run_dir / NEWEST_CHECKPOINT)
        model = build_model(cfg, data.label_prompts).to(device)
        objective = build_objective(cfg, model, data.class_weights, data.class_priors).to(device)
    trainer = _trainer(cfg, model, objective, device, precision)
    train_batches = build_split_batches(cfg, data, train=True, device=device)
    test_batches = build_split_batches(cfg, data, train=False, device=device)
    meter, state = EpochMeter(), TrainState()
    if checkpoint is not None:
        state = restore_training(checkpoint, trainer, meter)
        # For the lr and epochs the run has now: an extended run goes on along its new cosine.
        trainer.scheduler = build_scheduler(cfg, trainer.optimizer, start_epoch=state.epoch)
        start = "" if state.step_in_epoch else f", at the start of epoch {state.epoch + 1}"
        say(f"resuming {run_dir} {_position(state)}{start}")
    if is_main_process():
        for leftover in remove_partial_writes(run_dir):
            say(f"removed {leftover}, left by an interrupted write")
    logger = RunLogger(run_dir, enabled=is_main_process(), run_id=state.run_id, records=state.records,
                       resume_epoch=state.epoch if checkpoint is not None else None,
                       resume_step=state.global_step if checkpoint is not None else None)
    logger.log_config(cfg.to_dict())
    where = f"{processes.world_size} processes ({device.type})" if processes.world_size > 1 else device
    say(f"training {cfg.model_name} on {cfg.dataset} ({len(data.train)} train, {len(data.test)} test "
        f"images) on {where}, {precision}, {count(cfg.epochs, 'epoch')} -> {run_dir}")
    return Run(cfg, run_dir, data, trainer, objective, train_batches, test_batches, logger, state, meter)


def _trainer(cfg: Config, model: TailCLIP, objective: torch.nn.Module, device: torch.device,
             precision: str) -> Trainer:
    """The model and objective as a training step runs them (distributed, compiled), with the
    optimiser and schedule."""
    if device.type == "cuda" and not isinstance(model.clip_model.visual, clip.model.VisionTransformer):
        model = model.to(memory_format=torch.channels_last)  # cuDNN's fast layout for ResNets
    # The text tower is idle in a step only when it encodes neither captions nor class prompts.
    idle_text_tower = model.label_embedding_mode == "per_epoch" and not objective.uses_captions
    forward = distribute_model(model, device, find_unused_parameters=idle_text_tower)
    step_objective = global_batch_objective(objective, uneven_batches=cfg.skip_unreadable_images)
    if cfg.compile:
        forward, step_objective = compile_forward(forward), compile_forward(step_objective)
    optimizer = build_optimizer(cfg, model.parameters(), device)
    return Trainer(model, forward, step_objective, optimizer, build_scheduler(cfg, optimizer),
                   grad_scaler(precision, device), precision, device, cfg.max_nonfinite_steps)


def _evaluate_start(run: Run) -> None:
    """The evaluation before training: epoch 0 of the logs and the summary's start."""
    evaluation = _validate(run, "before training")
    start = val_record(evaluation)
    run.state.start_mAP = start["val/mAP"]
    run.logger.log_epoch(0, start)
    _log_pictures(run, 0, evaluation)
    say(f"epoch 0/{run.cfg.epochs} (before training)  {val_line(start)}")
    if no_threshold_reason(run.cfg.loss_function):  # why the logs hold the decisions at top-3 alone
        say(f"note: {no_threshold_reason(run.cfg.loss_function)}")


def _train_epoch(run: Run, epoch: int, stop: _StopOnSignal) -> dict:
    """Train epoch ``epoch`` (from where the state is), evaluate, log and save; its record."""
    cfg, state = run.cfg, run.state
    started = time.perf_counter()
    lr = run.trainer.optimizer.param_groups[0]["lr"]
    images_before = run.meter.images
    train_one_epoch(run.trainer, run.train_batches, state, run.meter, epoch, cfg.epochs, stop,
                    StepCurves(run.logger, cfg.log_every_steps))
    if stop.agree():
        raise _stop_here(run, stop)
    train_seconds = time.perf_counter() - started
    record = {**run.meter.summary(run.data.groups), "lr": lr,
              "time/train_images_per_s": (run.meter.images - images_before) / train_seconds}

    evaluation = _validate(run, f"after epoch {epoch + 1}")
    run.trainer.scheduler.step()
    state.epoch, state.step_in_epoch, run.meter = epoch + 1, 0, EpochMeter()
    record.update(val_record(evaluation))
    if cfg.skip_unreadable_images:  # images left out so far, by any process
        record.update({f"data/unreadable_{split}_images":
                       int(any_over_processes(getattr(run.data, split).unreadable).sum())
                       for split in ("train", "test")})
    names = _update_best(state, record, cfg)
    record.update({"best/val_mAP": state.best_mAP, "best/val_mAP_tail": state.best_mAP_tail,
                   "time/eval_s": time.perf_counter() - started - train_seconds,
                   "time/epoch_s": time.perf_counter() - started})
    run.logger.log_epoch(state.epoch, record)
    _log_pictures(run, state.epoch, evaluation)
    say(_epoch_line(state.epoch, cfg.epochs, record))
    _save(run, names)
    return record


def _validate(run: Run, when: str) -> Evaluation:
    try:
        return evaluate_model(run.trainer.model, run.objective, run.test_batches.batches(run.trainer.device),
                              run.data.test.caption_tokens, run.trainer.device, run.trainer.precision,
                              run.data.groups)
    except NonFiniteScoresError as error:
        raise NonFiniteLossError(
            f"evaluation {when}: {error}; stopping before it is logged or saved (the "
            "checkpoints of earlier epochs are untouched)") from None


def _log_pictures(run: Run, epoch: int, evaluation: Evaluation) -> None:
    run.logger.log_evaluation(epoch, evaluation.scores, evaluation.targets, evaluation.metrics["AP"],
                              run.data.class_names, run.data.groups, run.data.train_targets.sum(0))


def _save(run: Run, names: list[str]) -> None:
    if not names:
        return
    rng = all_processes_objects(rng_states())  # each process resumes with its own
    if not is_main_process():
        return
    run.logger.flush()
    content = training_checkpoint(run.cfg, run.data, run.trainer, run.state, run.meter, rng)
    for name in names:
        save_atomic(checkpoint_as(name, content), run.run_dir / name)


def _position(state: TrainState) -> str:
    """Where a run stands: "after epoch 3", or mid-epoch "after epoch 3, step 5 of epoch 4"."""
    return f"after epoch {state.epoch}" + (f", step {state.step_in_epoch} of epoch {state.epoch + 1}"
                                           if state.step_in_epoch else "")


def _stop_here(run: Run, stop: _StopOnSignal) -> TrainingInterrupted:
    _save(run, [NEWEST_CHECKPOINT])
    barrier()  # the other processes exit only once the checkpoint is written
    return TrainingInterrupted(f"stopped by {signal.Signals(stop.signal_number).name} {_position(run.state)}; "
                               f"saved {run.run_dir / NEWEST_CHECKPOINT} (continue with --resume)",
                               stop.signal_number)


def _final_line(state: TrainState, summary: dict) -> str:
    return (f"val mAP: start {percent(summary['start_val_mAP'])} (before training) -> end "
            f"{percent(summary['last_val_mAP'])} (after epoch {state.epoch}); best "
            f"{percent(state.best_mAP)} (epoch {state.best_mAP_epoch}), best tail mAP "
            f"{percent(state.best_mAP_tail)} (epoch {state.best_mAP_tail_epoch})")


def _update_best(state: TrainState, record: dict, cfg: Config) -> list[str]:
    """Update the progress after an evaluation; the checkpoint files to write.

    The newest checkpoint comes last: once it records a best value, that best file exists
    (a run killed in between redoes the epoch on --resume).
    """
    names = []
    if record["val/mAP"] > state.best_mAP:
        state.best_mAP, state.best_mAP_epoch = record["val/mAP"], state.epoch
        names += [BEST_MAP_CHECKPOINT] if cfg.save_best_mAP_checkpoint else []
    if record.get("val/mAP_tail", math.nan) > state.best_mAP_tail:
        state.best_mAP_tail, state.best_mAP_tail_epoch = record["val/mAP_tail"], state.epoch
        names += [BEST_TAIL_CHECKPOINT] if cfg.save_best_tail_mAP_checkpoint else []
    names += [NEWEST_CHECKPOINT] if cfg.save_newest_checkpoint else []
    state.last_metrics = {key: value for key, value in record.items() if key.startswith("val/")}
    return names


def _summary(state: TrainState, run_dir: Path) -> dict:
    return {"run_dir": str(run_dir), "epochs": state.epoch, "start_val_mAP": state.start_mAP,
            "last_val_mAP": state.last_metrics.get("val/mAP"),
            "best_val_mAP": state.best_mAP, "best_val_mAP_epoch": state.best_mAP_epoch,
            "best_val_mAP_tail": state.best_mAP_tail,
            "best_val_mAP_tail_epoch": state.best_mAP_tail_epoch}
