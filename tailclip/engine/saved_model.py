"""A model in a checkpoint: the weights it saves, and the model rebuilt from them.

A checkpoint is enough on its own to rebuild and use the model (weights, config, class
names, label prompts, backbone name). In the prompt modes on OpenAI's weights it holds only
the trained parameters, which go on top of the pretrained backbone again; otherwise it holds
every weight.
"""
from tailclip.config import PROMPT_MODES, Config, ConfigError
from tailclip.factory import build_model
from tailclip.model import TailCLIP
from tailclip.prompt_learning import PromptTailCLIP, load_trainable_state_dict, trainable_state_dict


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
