"""Training and evaluation of TailCLIP: what ``train.py`` and ``test.py`` run.

One epoch: balanced sampling (seeded by (seed, epoch)), mixed-precision forward, the paper's
objective, AdamW with a cosine schedule stepped once per epoch, then an evaluation of the
test split (the paper's "valid" split); one evaluation before the first epoch gives the
starting point (the untrained or zero-shot model) that the final summary compares with.
Every epoch is logged to TensorBoard and ``metrics.jsonl`` and checkpointed atomically;
``resume=True`` continues from ``newest_train_checkpoint.pt`` with the same subsequent losses
as an unbroken run.

Crash safety: a non-finite loss stops the run (``NonFiniteLossError``) without writing any
checkpoint; Ctrl-C (or SIGTERM) finishes the current step, saves the newest checkpoint and
raises ``TrainingInterrupted``.

Under torchrun (``tailclip.distributed``) every process trains its slice of each global batch
in ``DistributedDataParallel`` and computes the single-process loss of the whole batch; the
training metrics see the whole batch, evaluation is sharded and gathered, and only rank 0
prints, logs and writes checkpoints.
"""
import dataclasses
import math
import random
import signal
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import clip
from tailclip.batches import SplitBatches, build_split_batches
from tailclip.checkpoint import (FORMAT, VERSION, load_checkpoint, remove_partial_writes,
                                 restore_rng_states, rng_states, save_atomic)
from tailclip.config import Config
from tailclip.data import build_data
from tailclip.distributed import (barrier, distribute_model, gather_eval, init_distributed,
                                  is_main_process, main_process_first, max_over_processes,
                                  rank_and_world, reduce_mean)
from tailclip.logger import RunLogger, say
from tailclip.metrics import evaluate, scores_from_logits
from tailclip.model import TailCLIP
from tailclip.optim import build_optimizer, build_scheduler
from tailclip.precision import allow_tf32, autocast, grad_scaler, resolve_precision
from tailclip.prompt_learning import (PROMPT_MODES, PromptTailCLIP, build_tailclip,
                                      load_trainable_state_dict, trainable_state_dict)

BEST_MAP_CHECKPOINT = "best_valid_mAP.pt"
BEST_TAIL_CHECKPOINT = "best_valid_mAP_tail.pt"
NEWEST_CHECKPOINT = "newest_train_checkpoint.pt"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite more often than ``max_nonfinite_steps`` allows."""


class TrainingInterrupted(Exception):
    """Training stopped on a signal (Ctrl-C / SIGTERM) after saving the newest checkpoint."""

    def __init__(self, message: str, signal_number: int):
        super().__init__(message)
        self.signal_number = signal_number


# --------------------------------------------------------------------------------------------
# Set-up

def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) so that a run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_cpu_threads(num_threads: int) -> None:
    """``torch.set_num_threads(num_threads)``, unless 0 (torch's default, one per core).

    A tiny model's operations are too small to gain from a second thread, and threads that
    wait for each other slow a run several times over on cores other programs are using."""
    if num_threads:
        torch.set_num_threads(num_threads)


def build_clip(cfg: Config, pretrained: bool | None = None) -> clip.CLIP:
    """The backbone ``cfg.model_name``: OpenAI weights (``cfg.pretrained``) or random ones.

    Its text context must equal ``cfg.max_length`` and its input resolution ``cfg.size``;
    with ``interpolate_pos_embedding`` a Vision Transformer's positional embedding is
    resized instead.
    """
    pretrained = cfg.pretrained if pretrained is None else pretrained
    if pretrained:
        if cfg.model_name not in clip.available_models():
            raise ValueError(f"model_name = {cfg.model_name!r} has no pretrained OpenAI weights "
                             f"(those are: {', '.join(clip.available_models())}); "
                             "set pretrained = False to train it from random weights")
        model, _ = clip.load(cfg.model_name, device="cpu")
    else:
        model = clip.create_model(cfg.model_name)
    if cfg.max_length != model.context_length:
        raise ValueError(f"max_length = {cfg.max_length} but {cfg.model_name}'s text tower takes "
                         f"{model.context_length} tokens; set max_length = {model.context_length}")
    native = model.visual.input_resolution
    if native != cfg.size:
        if not cfg.interpolate_pos_embedding:
            raise ValueError(f"size = {cfg.size} but {cfg.model_name} takes {native}-pixel images; "
                             f"set size = {native}, or interpolate_pos_embedding = True "
                             "(Vision Transformers only)")
        clip.interpolate_positional_embedding(model, cfg.size)
    return model


def build_model(cfg: Config, label_prompts: list[str], class_weights=None,
                pretrained: bool | None = None) -> TailCLIP:
    """The model ``cfg.finetune`` asks for, on the CPU: `TailCLIP` (full fine-tuning) or the
    prompt-learning `PromptTailCLIP`, on the backbone of `build_clip`.

    ``label_prompts`` are the class prompts, ``cfg.class_caption + name`` for each class.
    """
    if not all(prompt.startswith(cfg.class_caption) for prompt in label_prompts):
        raise ValueError(f"class prompts must start with class_caption {cfg.class_caption!r}")
    class_names = [prompt[len(cfg.class_caption):] for prompt in label_prompts]
    label_tokens = clip.tokenize(label_prompts, context_length=cfg.max_length)
    return build_tailclip(build_clip(cfg, pretrained), label_tokens, class_names, cfg, class_weights)


def check_checkpoint_matches(checkpoint: dict, cfg: Config, class_names: list[str], path) -> None:
    """Refuse a checkpoint trained for other classes or another architecture than ``cfg``."""
    saved = checkpoint["config"]
    if checkpoint["class_names"] != list(class_names):
        raise ValueError(
            f"{path} was trained on {len(checkpoint['class_names'])} other classes "
            f"({', '.join(checkpoint['class_names'][:5])}, ...) than the config's dataset "
            f"{cfg.dataset!r} ({len(class_names)} classes: {', '.join(class_names[:5])}, ...)")
    for key in ("model_name", "size", "finetune"):
        if saved.get(key) != getattr(cfg, key):
            raise ValueError(f"{path} holds a model with {key} = {saved.get(key)!r}, "
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
        raise ValueError(f"{path}: the weights do not fit the model built from the config: "
                         f"{error}") from None


def trained_model(checkpoint: dict, cfg: Config, label_prompts: list[str], path,
                  class_weights=None) -> TailCLIP:
    """The checkpoint's model (on the CPU) for ``cfg``: prompts saved alone go on top of the
    pretrained backbone they were trained on (loaded, or downloaded once, by name); other
    checkpoints hold every weight, so the backbone starts from random ones."""
    pretrained = checkpoint.get("model_format") == "trainable"
    model = build_model(cfg, label_prompts, class_weights, pretrained=pretrained)
    load_model_state(model, checkpoint, path)
    return model


def model_from_checkpoint(checkpoint: dict, path="checkpoint") -> tuple[TailCLIP, Config]:
    """Rebuild the trained model (on the CPU, eval mode) from a checkpoint alone."""
    cfg = Config.from_dict(checkpoint["config"], source=str(path))
    return trained_model(checkpoint, cfg, checkpoint["label_prompts"], path).eval(), cfg


# --------------------------------------------------------------------------------------------
# Training

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
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    precision: str
    device: torch.device
    max_nonfinite_steps: int


def train_step(trainer: Trainer, images, targets, tokens, state: TrainState, epoch: int) -> dict | None:
    """One optimisation step; returns the model outputs (the loss also as a number in
    ``state.last_loss``), or None for a skipped non-finite loss."""
    with autocast(trainer.precision, trainer.device):
        out = trainer.forward(images, tokens, targets)
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
                    epoch: int, epochs: int, stop: _StopOnSignal | None = None) -> None:
    """Train on the epoch's batches from ``state.step_in_epoch`` on, updating ``state`` and
    ``meter``; returns early (with the state at a step boundary) when ``stop`` is requested."""
    model = trainer.model
    model.train()
    if model.label_embedding_mode == "per_epoch" and state.step_in_epoch == 0:
        with autocast(trainer.precision, trainer.device):
            model.refresh_label_embeddings()
    lr = trainer.optimizer.param_groups[0]["lr"]
    bar = tqdm(total=batches.steps_per_epoch(), initial=state.step_in_epoch, leave=False,
               desc=f"epoch {epoch + 1}/{epochs}", unit="step", disable=not is_main_process(),
               dynamic_ncols=True)
    started, seen, world = time.perf_counter(), 0, rank_and_world()[1]
    for images, targets, tokens, _ in batches.batches(trainer.device, epoch, state.step_in_epoch):
        out = train_step(trainer, images, targets, tokens, state, epoch)
        if out is not None:
            meter.update(out, targets, model.score_kind)
            seen += targets.shape[0] * world  # every process has an equal share of the batch
            bar.set_postfix(loss=f"{state.last_loss:.4f}", lr=f"{lr:.2e}",
                            img_s=f"{seen / (time.perf_counter() - started):.1f}", refresh=False)
        state.step_in_epoch += 1
        state.global_step += 1
        bar.update()
        if stop is not None and stop.agree():
            break
    bar.close()


@dataclasses.dataclass
class Evaluation:
    """Result of `evaluate_model`: mean loss, ``evaluate`` metrics and the raw outputs (CPU)."""
    loss: float
    metrics: dict
    scores: torch.Tensor
    targets: torch.Tensor
    image_emb: torch.Tensor | None = None


def _encode_in_chunks(encode, tokens: torch.Tensor, chunk: int, device) -> torch.Tensor:
    return torch.cat([encode(tokens[i:i + chunk].to(device)) for i in range(0, len(tokens), chunk)])


@torch.no_grad()
def evaluate_model(model: TailCLIP, batches, caption_tokens: torch.Tensor, device: torch.device,
                   precision: str, groups=None, keep_embeddings: bool = False,
                   chunk: int = 256) -> Evaluation:
    """Score a split: batched, the class prompts encoded once, scores kept on the device and
    moved to the CPU in one transfer at the end.

    ``batches`` yields device ``(images, targets, caption_tokens, indices)``;
    ``caption_tokens`` are the split's caption token ids [N, L], needed for the contrastive
    term of the loss: each distinct caption is encoded once (test captions repeat a lot).
    With several processes, ``batches`` is this process's share of the single-process
    batches (``build_split_batches``): the outputs of all processes are gathered in dataset
    order, and every process returns the single-process loss, scores and metrics.
    """
    model.eval()
    uses_captions = "clip" in model.objective.loss_function
    with autocast(precision, device):
        label_emb = model.encode_labels()
        if uses_captions:
            distinct, caption_of_image = torch.unique(caption_tokens, dim=0, return_inverse=True)
            caption_emb = _encode_in_chunks(model.encode_texts, clip.trim_padding(distinct), chunk, device)
            caption_of_image = caption_of_image.to(device)
    loss_sum = torch.zeros((), device=device)
    # Empty first entries: with several processes, one may have no batch at all.
    scores, targets = ([torch.empty(0, label_emb.shape[0], device=device)] for _ in range(2))
    embeddings, indices = [torch.empty(0, label_emb.shape[1], device=device)], [torch.empty(0, dtype=torch.long)]
    for images, batch_targets, _, index in batches:
        with autocast(precision, device):
            image_emb = model.encode_images(images)
            logits = model.class_logits(image_emb, label_emb)
            out = model.objective(
                image_emb=image_emb,
                caption_emb=caption_emb[caption_of_image[index.to(device)]] if uses_captions else None,
                logit_scale=model.clip_model.logit_scale.exp(), logits=logits, targets=batch_targets)
        loss_sum += out["loss"].float() * batch_targets.shape[0]
        scores.append(scores_from_logits(logits.float(), model.score_kind))
        targets.append(batch_targets)
        indices.append(index)
        if keep_embeddings:
            embeddings.append(image_emb.float())
    loss = reduce_mean(loss_sum.item(), count=sum(len(index) for index in indices))
    outputs = [torch.cat(scores), torch.cat(targets)] + ([torch.cat(embeddings)] if keep_embeddings else [])
    _, scores, targets, *image_emb = (t.cpu() for t in gather_eval(torch.cat(indices), *outputs))
    return Evaluation(loss=loss, metrics=evaluate(scores, targets, groups), scores=scores,
                      targets=targets, image_emb=image_emb[0] if keep_embeddings else None)


def _training_checkpoint(cfg: Config, data, trainer: Trainer, state: TrainState,
                         meter: EpochMeter) -> dict:
    """Everything needed to resume training, or to use the model without the data."""
    return {
        "format": FORMAT,
        "version": VERSION,
        **model_state(trainer.model, cfg),
        "optimizer": trainer.optimizer.state_dict(),
        "scheduler": trainer.scheduler.state_dict(),
        "scaler": trainer.scaler.state_dict(),
        "state": dataclasses.asdict(state),
        "epoch_progress": meter.state_dict() if state.step_in_epoch else None,
        "label_embeddings": trainer.model.cached_label_emb if state.step_in_epoch else None,
        "config": cfg.to_dict(),
        "backbone": cfg.model_name,
        "class_names": list(data.class_names),
        "label_prompts": list(data.label_prompts),
        "groups": data.groups,
        "rng": rng_states(),
    }


def _resume(checkpoint: dict, trainer: Trainer, meter: EpochMeter) -> TrainState:
    """Restore model, optimiser, schedule, scaler, progress and random states."""
    load_model_state(trainer.model, checkpoint, NEWEST_CHECKPOINT)
    trainer.optimizer.load_state_dict(checkpoint["optimizer"])
    trainer.scheduler.load_state_dict(checkpoint["scheduler"])
    trainer.scaler.load_state_dict(checkpoint["scaler"])
    state = TrainState(**checkpoint["state"])
    if checkpoint["epoch_progress"] is not None:
        meter.load_state_dict(checkpoint["epoch_progress"], trainer.device)
    if checkpoint["label_embeddings"] is not None:
        trainer.model.cached_label_emb = checkpoint["label_embeddings"].to(trainer.device)
    restore_rng_states(checkpoint["rng"])
    return state


def _report_config_changes(checkpoint: dict, cfg: Config) -> None:
    changed = {key: (value, getattr(cfg, key)) for key, value in checkpoint["config"].items()
               if getattr(cfg, key, value) != value}
    for key, (old, new) in changed.items():
        say(f"resume: {key} was {old!r} in the checkpoint, is {new!r} now")


def _val_record(evaluation: Evaluation) -> dict:
    return {"val/loss": evaluation.loss, **{f"val/{k}": v for k, v in evaluation.metrics.items() if k != "AP"}}


def _val_line(record: dict) -> str:
    def pct(key):
        return _percent(record.get(key))
    return (f"val loss {record['val/loss']:.4f}  val mAP {pct('val/mAP')} "
            f"(head {pct('val/mAP_head')}, medium {pct('val/mAP_medium')}, tail {pct('val/mAP_tail')})  "
            f"AUROC {pct('val/AUROC')}")


def _epoch_line(epoch: int, epochs: int, record: dict) -> str:
    line = (f"epoch {epoch}/{epochs}  train loss {record.get('train/loss', math.nan):.4f}  "
            f"{_val_line(record)}  {record['time/epoch_s']:.1f} s, "
            f"{record['time/train_images_per_s']:.0f} img/s")
    if "data/unreadable_train_images" in record:
        line += (f"  unreadable images left out: {record['data/unreadable_train_images']} train, "
                 f"{record['data/unreadable_test_images']} test")
    return line


def train(cfg: Config, run_name: str, resume: bool = False) -> dict:
    """Train per ``cfg`` into ``<cfg.run_dir>/<run_name>/``; returns a summary of the run.

    Raises ``NonFiniteLossError`` (nothing saved) and ``TrainingInterrupted`` (newest
    checkpoint saved); ``train.py`` turns them into exit codes. Under torchrun, joins the
    process group (``init_distributed``; the caller ends it with ``distributed.cleanup``).
    """
    run_dir = Path(cfg.run_dir) / run_name
    checkpoint = None
    if resume:
        if not (run_dir / NEWEST_CHECKPOINT).is_file():
            raise FileNotFoundError(f"cannot resume: no {run_dir / NEWEST_CHECKPOINT}")
        checkpoint = load_checkpoint(run_dir / NEWEST_CHECKPOINT)
    processes = init_distributed(cfg.device)
    device = processes.device
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cuda":
        allow_tf32()
    set_cpu_threads(cfg.num_threads)
    seed_everything(cfg.seed)

    with main_process_first():  # one process per node generates the data, downloads weights
        data = build_data(cfg)
        if checkpoint is not None:
            check_checkpoint_matches(checkpoint, cfg, data.class_names, run_dir / NEWEST_CHECKPOINT)
            _report_config_changes(checkpoint, cfg)
        model = build_model(cfg, data.label_prompts, data.class_weights).to(device)
    if device.type == "cuda" and not isinstance(model.clip_model.visual, clip.model.VisionTransformer):
        model = model.to(memory_format=torch.channels_last)  # cuDNN's fast layout for ResNets
    # The text tower is idle in a step only when it encodes neither captions nor class prompts.
    idle_text_tower = cfg.label_embeddings == "per_epoch" and "clip" not in cfg.loss_function
    forward = distribute_model(model, device, find_unused_parameters=idle_text_tower)
    optimizer = build_optimizer(cfg, model.parameters(), device)
    trainer = Trainer(model, torch.compile(forward) if cfg.compile else forward, optimizer,
                      build_scheduler(cfg, optimizer), grad_scaler(precision, device), precision,
                      device, cfg.max_nonfinite_steps)
    train_batches = build_split_batches(cfg, data, train=True, device=device)
    test_batches = build_split_batches(cfg, data, train=False, device=device)
    class_counts = data.train_targets.sum(0)

    meter = EpochMeter()
    state = _resume(checkpoint, trainer, meter) if checkpoint is not None else TrainState()
    if checkpoint is not None:
        say(f"resuming {run_dir} after epoch {state.epoch}, step {state.step_in_epoch}")
    elif (run_dir / NEWEST_CHECKPOINT).exists():
        say(f"{run_dir} holds an earlier run: starting afresh (resume it with --resume)")
    if is_main_process():
        for leftover in remove_partial_writes(run_dir):
            say(f"removed {leftover}, left by an interrupted checkpoint write")
    logger = RunLogger(run_dir, enabled=is_main_process(),
                       resume_epoch=state.epoch if checkpoint is not None else None)
    logger.log_config(cfg.to_dict())
    where = f"{processes.world_size} processes ({device.type})" if processes.world_size > 1 else device
    say(f"training {cfg.model_name} on {cfg.dataset} ({len(data.train)} train, {len(data.test)} test "
        f"images) on {where}, {precision}, {cfg.epochs} epochs -> {run_dir}")

    def save(names: list[str]) -> None:
        if not is_main_process() or not names:
            return
        content = _training_checkpoint(cfg, data, trainer, state, meter)
        for name in names:
            save_atomic(content, run_dir / name)

    def stop_here() -> TrainingInterrupted:
        save([NEWEST_CHECKPOINT])
        barrier()  # the other processes exit only once the checkpoint is written
        where = f"after epoch {state.epoch}" + (f", step {state.step_in_epoch} of epoch {state.epoch + 1}"
                                                 if state.step_in_epoch else "")
        return TrainingInterrupted(f"stopped by {signal.Signals(stop.signal_number).name} {where}; "
                                   f"saved {run_dir / NEWEST_CHECKPOINT} (continue with --resume)",
                                   stop.signal_number)

    def validate() -> Evaluation:
        return evaluate_model(model, test_batches.batches(device), data.test.caption_tokens, device,
                              precision, data.groups)

    with logger, _StopOnSignal() as stop:
        if checkpoint is None:  # where training starts from, for the summary at the end
            start = _val_record(validate())
            state.start_mAP = start["val/mAP"]
            say(f"epoch 0/{cfg.epochs} (before training)  {_val_line(start)}")
        for epoch in range(state.epoch, cfg.epochs):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            images_before = meter.images
            train_one_epoch(trainer, train_batches, state, meter, epoch, cfg.epochs, stop)
            if stop.agree():
                raise stop_here()
            train_seconds = time.perf_counter() - started
            record = {**meter.summary(data.groups), "lr": lr,
                      "time/train_images_per_s": (meter.images - images_before) / train_seconds}

            evaluation = validate()
            trainer.scheduler.step()
            state.epoch, state.step_in_epoch, meter = epoch + 1, 0, EpochMeter()
            record.update(_val_record(evaluation))
            if cfg.skip_unreadable_images:  # images left out so far (this process's count)
                record.update({f"data/unreadable_{split}_images": len(getattr(data, split).unreadable_paths)
                               for split in ("train", "test")})
            names = _update_best(state, record, cfg)
            record.update({"best/val_mAP": state.best_mAP, "best/val_mAP_tail": state.best_mAP_tail,
                           "time/eval_s": time.perf_counter() - started - train_seconds,
                           "time/epoch_s": time.perf_counter() - started})
            logger.log_epoch(state.epoch, record)
            logger.log_evaluation(state.epoch, evaluation.scores, evaluation.targets,
                                  evaluation.metrics["AP"], data.class_names, data.groups, class_counts)
            say(_epoch_line(state.epoch, cfg.epochs, record))
            save(names)
            if stop.agree() and state.epoch < cfg.epochs:
                raise stop_here()
        summary = _summary(state, run_dir)
        logger.log_hparams(cfg.to_dict(), {f"hparam/{key}": value for key, value in summary.items()
                                           if "mAP" in key and "epoch" not in key})
    say(f"val mAP: start {_percent(summary['start_val_mAP'])} (before training) -> end "
        f"{_percent(summary['last_val_mAP'])} (after epoch {state.epoch}); best "
        f"{_percent(state.best_mAP)} (epoch {state.best_mAP_epoch}), best tail mAP "
        f"{_percent(state.best_mAP_tail)} (epoch {state.best_mAP_tail_epoch})")
    return summary


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


def _percent(value) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"
