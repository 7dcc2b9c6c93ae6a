"""The run folder ``<run_dir>/<run name>/``: what its checkpoints hold and how a run resumes
from them.

A training checkpoint is enough on its own to rebuild and use the model (weights, config,
class names, label prompts, backbone name) and, for ``--resume``, to continue exactly where
the run stopped (optimiser, schedule, scaler, progress, the unfinished epoch's meter and the
random-number states). The file format itself (atomic writes, safe loading) is
`tailclip.checkpoint`'s.
"""
import dataclasses
import math

from tailclip.checkpoint import FORMAT, VERSION, restore_rng_states, rng_states
from tailclip.config import Config, ConfigError
from tailclip.factory import build_model
from tailclip.logger import MAP_UNIT, say
from tailclip.model import TailCLIP
from tailclip.prompt_learning import (PROMPT_MODES, PromptTailCLIP, load_trainable_state_dict,
                                      trainable_state_dict)

BEST_MAP_CHECKPOINT = "best_valid_mAP.pt"
BEST_TAIL_CHECKPOINT = "best_valid_mAP_tail.pt"
NEWEST_CHECKPOINT = "newest_train_checkpoint.pt"


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


def training_checkpoint(cfg: Config, data, trainer, state: TrainState, meter) -> dict:
    """Everything needed to resume training, or to use the model without the data."""
    return {
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
        "rng": rng_states(),
    }


def restore_training(checkpoint: dict, trainer, meter) -> TrainState:
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


def report_config_changes(checkpoint: dict, cfg: Config) -> None:
    changed = {key: (value, getattr(cfg, key)) for key, value in checkpoint["config"].items()
               if getattr(cfg, key, value) != value}
    for key, (old, new) in changed.items():
        say(f"resume: {key} was {old!r} in the checkpoint, is {new!r} now")
