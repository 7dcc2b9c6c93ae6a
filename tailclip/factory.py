"""Building the model a config asks for: the CLIP backbone (OpenAI's, or open_clip's through
`tailclip.open_clip_backbone`; pretrained or random), then `TailCLIP` or its prompt-learning
variant on top; and the process-wide set-up (seeds, CPU threads) that comes before it."""
import random
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import clip
from tailclip.config import Config, ConfigError
from tailclip.errors import MissingFileError
from tailclip.model import TailCLIP
from tailclip.open_clip_backbone import (OpenCLIPBackbone, OpenCLIPError, build_open_clip_backbone,
                                         is_open_clip_name)
from tailclip.prompt_learning import build_tailclip
from tailclip.text_tokens import text_tokenizer


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


def build_clip(cfg: Config, pretrained: bool | None = None) -> nn.Module:
    """The backbone ``cfg.model_name`` with the weights ``cfg.pretrained`` names (random ones
    when ``pretrained`` is False): OpenAI's CLIP (``clip.load``, or a checkpoint file), or an
    open_clip model ("open_clip:<name>", `tailclip.open_clip_backbone`).

    Its text context must equal ``cfg.max_length`` and its input resolution ``cfg.size``;
    with ``interpolate_pos_embedding`` a Vision Transformer of our ``clip`` package has its
    positional embedding resized instead.
    """
    weights = False if pretrained is False else cfg.pretrained
    if is_open_clip_name(cfg.model_name):
        model = build_open_clip_backbone(cfg.model_name, weights)
    else:
        model = _openai_clip(cfg.model_name, weights)
    _check_text_context(cfg, model)
    _fit_resolution(cfg, model)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
    return model


def _openai_clip(name: str, weights: bool | str) -> clip.CLIP:
    if weights is False:
        return clip.create_model(name)
    if weights is True:
        if name not in clip.available_models():
            raise ConfigError(f"model_name = {name!r} has no pretrained OpenAI weights "
                             f"(those are: {', '.join(clip.available_models())}); "
                             "set pretrained = False to train it from random weights")
        return clip.load(name, device="cpu")[0]
    if not Path(weights).expanduser().is_file():
        raise MissingFileError(f"pretrained = {weights!r} is not a checkpoint file; for {name} pretrained is "
                               "True (OpenAI's weights), False (random ones) or the path of a checkpoint file")
    model = clip.load(Path(weights).expanduser(), device="cpu")[0]
    with torch.device("meta"):
        expected = clip.create_model(name).state_dict()
    if {k: v.shape for k, v in model.state_dict().items()} != {k: v.shape for k, v in expected.items()}:
        raise ConfigError(f"pretrained = {weights!r} holds another architecture than model_name = {name!r}")
    return model


def _check_text_context(cfg: Config, model: nn.Module) -> None:
    if cfg.max_length != model.context_length:
        raise ConfigError(f"max_length = {cfg.max_length} but {cfg.model_name}'s text tower takes "
                         f"{model.context_length} tokens; set max_length = {model.context_length}")


def _fit_resolution(cfg: Config, model: nn.Module) -> None:
    """Refuse a ``size`` the backbone does not take, or resize its positional embedding."""
    wrapped = isinstance(model, OpenCLIPBackbone)
    native = model.input_resolution if wrapped else model.visual.input_resolution
    if native == cfg.size:
        return
    if wrapped:
        raise OpenCLIPError(f"size = {cfg.size} but {cfg.model_name} takes {native}-pixel images, and "
                            "interpolate_pos_embedding works on our clip package's Vision Transformers "
                            f"only; set size = {native}")
    if not cfg.interpolate_pos_embedding:
        raise ConfigError(f"size = {cfg.size} but {cfg.model_name} takes {native}-pixel images; "
                         f"set size = {native}, or interpolate_pos_embedding = True "
                         "(Vision Transformers only)")
    clip.interpolate_positional_embedding(model, cfg.size)


def build_model(cfg: Config, label_prompts: list[str], class_weights=None,
                pretrained: bool | None = None, class_priors=None) -> TailCLIP:
    """The model ``cfg.finetune`` asks for, on the CPU: `TailCLIP` (full fine-tuning) or the
    prompt-learning `PromptTailCLIP`, on the backbone of `build_clip`.

    ``label_prompts`` are the class prompts, ``cfg.class_caption + name`` for each class;
    ``class_weights`` and ``class_priors`` (the training split's) go to the loss.
    """
    if not all(prompt.startswith(cfg.class_caption) for prompt in label_prompts):
        raise ValueError(f"class prompts must start with class_caption {cfg.class_caption!r}")
    class_names = [prompt[len(cfg.class_caption):] for prompt in label_prompts]
    backbone = build_clip(cfg, pretrained)
    if cfg.finetune != "full" and isinstance(backbone, OpenCLIPBackbone):
        raise OpenCLIPError(f"finetune = {cfg.finetune!r} needs a backbone of our clip package (OpenAI's, "
                            f"or an open_clip standard CLIP); {cfg.model_name} runs as open_clip's own "
                            "model: set finetune = 'full'")
    label_tokens = text_tokenizer(cfg)(label_prompts)
    return build_tailclip(backbone, label_tokens, class_names, cfg, class_weights, class_priors)
