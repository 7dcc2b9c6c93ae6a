"""Training TailCLIP: the loop that ``train.py`` runs.

One epoch: balanced sampling (seeded by (seed, epoch)), mixed-precision forward, the paper's
objective, AdamW with a cosine schedule stepped once per epoch, then an evaluation of the
test split (the paper's "valid" split); one evaluation before the first epoch gives the
starting point (the untrained or zero-shot model) that the final summary compares with.
Every epoch is logged to TensorBoard and ``metrics.jsonl`` and checkpointed atomically, and
every ``log_every_steps`` steps the loss, its terms and the learning rate go to TensorBoard
on the global step axis (``logger.StepCurves``); ``resume=True`` continues from
``newest_train_checkpoint.pt`` with the same subsequent losses as an unbroken run.

The operational concerns sit behind one seam each: the run folder (`run_folder`: one training
at a time, an earlier run never overwritten unless asked), the set-up shared with test
reports (`setup`), stop signals (`stop_signals`: Ctrl-C, SIGTERM and SIGHUP finish the
current step, save the newest checkpoint and raise ``TrainingInterrupted``; so does a
DataLoader worker that dies, with ``WorkerDiedError``), checkpoints (`_save`, contents from
`training_state`) and the machine's faults (`boundary`: a folder that cannot be written, out
of memory). A non-finite loss, or an evaluation with non-finite scores, stops the run
(``NonFiniteLossError``) without writing any checkpoint of that epoch.

Under torchrun (``tailclip.engine.distributed``) every process trains its slice of each global batch
in ``DistributedDataParallel`` and computes the single-process loss of the whole batch; the
training metrics see the whole batch, evaluation is sharded and gathered, and only rank 0
prints, logs and writes checkpoints.
"""
import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

from tailclip.config import Config, resolve_path
from tailclip.engine.batches import SplitBatches
from tailclip.engine.boundary import check_writable, memory_of
from tailclip.engine.checkpoint import load_checkpoint, rng_states, save_atomic
from tailclip.engine.distributed import (
    all_processes_objects,
    any_over_processes,
    barrier,
    init_distributed,
    is_main_process,
)
from tailclip.engine.epoch_summary import epoch_line, final_line, position, run_summary, update_best
from tailclip.engine.evaluation import Evaluation, NonFiniteScoresError, evaluate_model, val_line, val_record
from tailclip.engine.logger import StepCurves, say
from tailclip.engine.meter import EpochMeter
from tailclip.engine.precision import autocast
from tailclip.engine.progress import show_progress
from tailclip.engine.run_folder import (
    NEWEST_CHECKPOINT,
    RESTART_ADVICE,
    check_same_run,
    claimed_run_folder,
    how_to_go_on,
    restore_run_files,
    resume_checkpoint,
    run_files,
)
from tailclip.engine.setup import Run, Trainer, set_up_training
from tailclip.engine.stop_signals import StopSignals, TrainingInterrupted, WorkerDiedError, dead_worker, signal_name
from tailclip.engine.training_state import TrainState, checkpoint_as, resumed_config, training_checkpoint
from tailclip.errors import FileSystemError, MissingFileError, TailCLIPError
from tailclip.thresholds import no_threshold_reason


class NonFiniteLossError(TailCLIPError, RuntimeError):
    """The loss became NaN or infinite more often than ``max_nonfinite_steps`` allows, or an
    evaluation's scores did."""


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
                    epoch: int, epochs: int, stop: StopSignals | None = None,
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

    Raises ``NonFiniteLossError`` (nothing of that epoch saved), ``TrainingInterrupted`` and
    ``WorkerDiedError`` (newest checkpoint saved), ``FileSystemError`` and ``OutOfMemoryError``
    (earlier checkpoints intact); ``train.py`` turns them into exit codes. Under torchrun,
    joins the process group (``init_distributed``; the caller ends it with
    ``distributed.cleanup``).
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
            return run_summary(finished, run_dir)
    check_writable(run_dir, "run folder", "--set run_dir=PATH")  # before anything is built
    with StopSignals() as stop, claimed_run_folder(run_dir, resume, overwrite):
        try:
            return _train_in(run_dir, cfg, checkpoint, processes.device, stop, on_epoch)
        except FileSystemError as error:  # the files written before are intact
            raise error.then(how_to_go_on(run_dir)) from None


def _train_in(run_dir: Path, cfg: Config, checkpoint: dict | None, device: torch.device, stop: StopSignals,
              on_epoch: Callable[[int, dict], None] | None) -> dict:
    """`train`, in a run folder that this training holds."""
    run = set_up_training(run_dir, cfg, checkpoint, device, stop)
    with run.logger:
        stop.defer()
        if checkpoint is None:  # where training starts from: epoch 0 of the logs and the summary
            _evaluate_start(run)
            _stop_if_asked(run)
        for epoch in range(run.state.epoch, cfg.epochs):
            record = _train_epoch(run, epoch)
            if on_epoch is not None:
                on_epoch(run.state.epoch, record)
            if run.state.epoch < cfg.epochs:
                _stop_if_asked(run)
        summary = run_summary(run.state, run_dir)
        run.logger.log_hparams(cfg.to_dict(), {f"hparam/{key}": value for key, value in summary.items()
                                               if "mAP" in key and "epoch" not in key})
        if stop.agree():  # during the last epoch: nothing is left to save, but the caller stops
            raise TrainingInterrupted(
                f"stopped by {signal_name(stop.signal_number)} during the last epoch, once it was "
                f"saved: {run_dir} is complete ({run.state.epoch} epochs)", stop.signal_number)
    say(final_line(run.state, summary))
    return summary


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


def _train_epoch(run: Run, epoch: int) -> dict:
    """Train epoch ``epoch`` (from where the state is), evaluate, log and save; its record."""
    cfg, state = run.cfg, run.state
    started = time.perf_counter()
    lr = run.trainer.optimizer.param_groups[0]["lr"]
    images_before = run.meter.images
    step_memory = (f"grad_checkpointing = True, precision = 'bf16' (a GPU's) or, in a new run, a batch_size "
                   f"below {cfg.batch_size}")
    with _stop_on_dead_worker(run), memory_of("a training step", step_memory, lambda: how_to_go_on(run.run_dir)):
        train_one_epoch(run.trainer, run.train_batches, state, run.meter, epoch, cfg.epochs, run.stop,
                        StepCurves(run.logger, cfg.log_every_steps))
    _stop_if_asked(run)
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
    names = update_best(state, record, cfg)
    record.update({"best/val_mAP": state.best_mAP, "best/val_mAP_tail": state.best_mAP_tail,
                   "time/eval_s": time.perf_counter() - started - train_seconds,
                   "time/epoch_s": time.perf_counter() - started})
    run.logger.log_epoch(state.epoch, record)
    _log_pictures(run, state.epoch, evaluation)
    say(epoch_line(state.epoch, cfg.epochs, record))
    _save(run, names)
    return record


def _validate(run: Run, when: str) -> Evaluation:
    memory = f"an eval_batch_size below {run.cfg.eval_batch_size} or precision = 'bf16' (a GPU's)"
    try:
        with _stop_on_dead_worker(run), memory_of(f"the evaluation {when}", memory,
                                                   lambda: how_to_go_on(run.run_dir)):
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
    """The checkpoint seam: the training's state written to each of ``names`` (atomically)."""
    if not names:
        return
    rng = all_processes_objects(rng_states())  # each process resumes with its own
    if not is_main_process():
        return
    run.logger.flush()
    content = training_checkpoint(run.cfg, run.data, run.trainer, run.state, run.meter, rng)
    for name in names:
        save_atomic(checkpoint_as(name, content), run.run_dir / name)


def _saved_here(run: Run) -> str:
    """Save the newest checkpoint at this step boundary; where the run stands, and where it is."""
    _save(run, [NEWEST_CHECKPOINT])
    barrier()  # the other processes exit only once the checkpoint is written
    return f"{position(run.state)}; saved {run.run_dir / NEWEST_CHECKPOINT} (continue with --resume)"


def _stop_if_asked(run: Run) -> None:
    """At a step boundary: a stop signal saves and ends the run."""
    if run.stop.agree():
        raise TrainingInterrupted(f"stopped by {signal_name(run.stop.signal_number)} {_saved_here(run)}",
                                  run.stop.signal_number)


@contextlib.contextmanager
def _stop_on_dead_worker(run: Run):
    """A DataLoader worker that dies (torch raises at a step boundary, `stop_signals`): save there."""
    try:
        yield
    except RuntimeError as error:
        worker = dead_worker(error)
        if worker is None:
            raise
        raise WorkerDiedError(f"{worker} (the out-of-memory killer ends processes so; fewer num_workers "
                              f"need less memory): stopped {_saved_here(run)}") from None
