"""A run's set-up. Shared by training (`tailclip.engine.training`) and test reports
(`tailclip.tools.report`): precision, TF32, CPU threads and seed, then the data, the model
and the objective, in that order (the order of the random draws a seeded run repeats). For
training also the model and objective as a step runs them, the optimiser, the batches, the
logger and the state restored from a checkpoint.
"""
import dataclasses
from pathlib import Path

import torch

import clip
from tailclip.config import Config
from tailclip.data import DataBundle, build_data
from tailclip.engine.batches import SplitBatches, build_split_batches
from tailclip.engine.distributed import (
    distribute_model,
    global_batch_objective,
    is_main_process,
    main_process_first,
    rank_and_world,
)
from tailclip.engine.epoch_summary import position
from tailclip.engine.files import remove_partial_writes
from tailclip.engine.logger import RunLogger, say
from tailclip.engine.meter import EpochMeter
from tailclip.engine.optim import build_optimizer, build_scheduler
from tailclip.engine.precision import grad_scaler, resolve_precision, set_tf32
from tailclip.engine.run_folder import NEWEST_CHECKPOINT
from tailclip.engine.saved_model import check_checkpoint_matches, trained_model
from tailclip.engine.stop_signals import StopSignals
from tailclip.engine.training_state import TrainState, restore_training
from tailclip.factory import build_model, build_objective, seed_everything, set_cpu_threads
from tailclip.model import TailCLIP
from tailclip.wording import count


@dataclasses.dataclass
class RunParts:
    """What a run scores or trains, on its device."""
    precision: str  # resolved for the device ("fp32", "bf16", "fp16")
    data: DataBundle
    model: TailCLIP
    objective: torch.nn.Module


def build_run_parts(cfg: Config, device: torch.device, checkpoint: dict | None = None, path: Path | None = None,
                    train_images: bool = True) -> RunParts:
    """Set the process up for ``cfg`` and build its data, model and objective on ``device``.

    With ``checkpoint`` (read from ``path``), the model is the checkpoint's, refused in one
    line when it was trained for other classes or another architecture. ``train_images``:
    False when only the test images are read (an evaluation)."""
    precision = resolve_precision(cfg.precision, device)
    set_tf32(cfg.tf32, device)
    set_cpu_threads(cfg.num_threads)
    seed_everything(cfg.seed)  # the random weights of a model that is not pretrained
    with main_process_first():  # one process per node generates the data, downloads weights
        data = build_data(cfg, train_images=train_images)
        if checkpoint is None:
            model = build_model(cfg, data.label_prompts)
        else:
            check_checkpoint_matches(checkpoint, cfg, data.class_names, path)
            model = trained_model(checkpoint, cfg, data.label_prompts, path)
        objective = build_objective(cfg, model.to(device), data.class_weights, data.class_priors).to(device)
    return RunParts(precision, data, model, objective)


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


def build_trainer(cfg: Config, parts: RunParts, device: torch.device) -> Trainer:
    """The model and objective as a training step runs them (distributed, compiled), with the
    optimiser and schedule."""
    model, objective = parts.model, parts.objective
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
                   grad_scaler(precision=parts.precision, device=device), parts.precision, device,
                   cfg.max_nonfinite_steps)


@dataclasses.dataclass
class Run:
    """A training's parts, as `set_up_training` builds them; the loop's functions share them."""
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
    stop: StopSignals


def set_up_training(run_dir: Path, cfg: Config, checkpoint: dict | None, device: torch.device,
                    stop: StopSignals) -> Run:
    """The data, model, objective, optimiser, batches and logger of a run, restored from
    ``checkpoint`` when it resumes."""
    parts = build_run_parts(cfg, device, checkpoint, run_dir / NEWEST_CHECKPOINT)
    trainer = build_trainer(cfg, parts, device)
    train_batches = build_split_batches(cfg, parts.data, train=True, device=device)
    test_batches = build_split_batches(cfg, parts.data, train=False, device=device)
    meter, state = EpochMeter(), TrainState()
    if checkpoint is not None:
        state = restore_training(checkpoint, trainer, meter)
        # For the lr and epochs the run has now: an extended run goes on along its new cosine.
        trainer.scheduler = build_scheduler(cfg, trainer.optimizer, start_epoch=state.epoch)
        start = "" if state.step_in_epoch else f", at the start of epoch {state.epoch + 1}"
        say(f"resuming {run_dir} {position(state)}{start}")
    if is_main_process():
        for leftover in remove_partial_writes(run_dir):
            say(f"removed {leftover}, left by an interrupted write")
    logger = RunLogger(run_dir, enabled=is_main_process(), run_id=state.run_id, records=state.records,
                       resume_epoch=state.epoch if checkpoint is not None else None,
                       resume_step=state.global_step if checkpoint is not None else None)
    logger.log_config(cfg.to_dict())
    world = rank_and_world()[1]
    where = f"{world} processes ({device.type})" if world > 1 else device
    say(f"training {cfg.model_name} on {cfg.dataset} ({len(parts.data.train)} train, {len(parts.data.test)} test "
        f"images) on {where}, {parts.precision}, {count(cfg.epochs, 'epoch')} -> {run_dir}")
    return Run(cfg, run_dir, parts.data, trainer, parts.objective, train_batches, test_batches, logger, state,
               meter, stop)
