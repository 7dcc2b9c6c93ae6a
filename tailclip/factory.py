"""Building the model a config asks for: the CLIP backbone (OpenAI weights or random ones),
then `TailCLIP` or its prompt-learning variant on top; and the process-wide set-up (seeds,
CPU threads) that comes before it."""
import random

import numpy as np
import torch

import clip
from tailclip.config import Config, ConfigError
from tailclip.model import TailCLIP
from tailclip.prompt_learning import build_tailclip


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
            raise ConfigError(f"model_name = {cfg.model_name!r} has no pretrained OpenAI weights "
                              f"(those are: {', '.join(clip.available_models())}); "
                              "set pretrained = False to train it from random weights")
        model, _ = clip.load(cfg.model_name, device="cpu")
    else:
        model = clip.create_model(cfg.model_name)
    if cfg.max_length != model.context_length:
        raise ConfigError(f"max_length = {cfg.max_length} but {cfg.model_name}'s text tower takes "
                          f"{model.context_length} tokens; set max_length = {model.context_length}")
    native = model.visual.input_resolution
    if native != cfg.size:
        if not cfg.interpolate_pos_embedding:
            raise ConfigError(f"size = {cfg.size} but {cfg.model_name} takes {native}-pixel images; "
                              f"set size = {native}, or interpolate_pos_embedding = True "
                              "(Vision Transformers only)")
        clip.interpolate_positional_embedding(model, cfg.size)
    model.set_grad_checkpointing(cfg.grad_checkpointing)
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
