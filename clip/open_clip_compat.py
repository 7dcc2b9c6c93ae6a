"""open_clip's standard CLIP models, built by our `clip.model.CLIP`.

open_clip describes each model by a config (its `model_configs/*.json`: `embed_dim`,
`vision_cfg`, `text_cfg`, `quick_gelu`, ...). Many are plain CLIPs of other sizes: a ViT or
ModifiedResNet image tower and OpenAI's text transformer, with GELU or QuickGELU, any width,
depth, patch size and resolution, attention heads of another width, another MLP ratio or
layer scale in the image tower. Those `is_plain_clip` accepts, `build_from_open_clip_config`
builds, and their open_clip weights load into our model, whose parameter names are
open_clip's (and OpenAI's):

    model = build_from_open_clip_config(open_clip.get_model_config("ViT-H-14-378"))
    model.load_state_dict(convert_open_clip_state_dict(state_dict))  # strict

Everything else (timm or Hugging Face towers, SigLIP's logit bias, CoCa, other tokenizers,
bidirectional or differently pooled text towers) is refused. This module never imports
open_clip: a config is a plain dict.
"""
from typing import Any

import torch

from .model import CLIP

_ANY = object()  # any value of the key is reproduced
# Every key a plain config may hold: _ANY, or open_clip's default, the value with which the
# key changes nothing (a config may spell it out). Other keys make a config non-plain.
_TOP_LEVEL = {"embed_dim": _ANY, "vision_cfg": _ANY, "text_cfg": _ANY, "quick_gelu": _ANY, "custom_text": False}
_VISION = {
    "layers": _ANY, "width": _ANY, "head_width": _ANY, "mlp_ratio": _ANY, "patch_size": _ANY,
    "image_size": _ANY, "ls_init_value": _ANY,
    "patch_dropout": 0.0, "attentional_pool": False, "no_ln_pre": False, "pos_embed_type": "learnable",
    "final_ln_after_pool": False, "pool_type": "tok", "output_tokens": False, "act_kwargs": None,
    "norm_kwargs": None, "timm_model_name": None,
}
_TEXT = {
    "context_length": _ANY, "vocab_size": _ANY, "width": _ANY, "heads": _ANY, "layers": _ANY,
    "mlp_ratio": 4.0, "ls_init_value": None, "hf_tokenizer_name": None, "tokenizer_kwargs": None,
    "embed_cls": False, "no_causal_mask": False, "final_ln_after_pool": False, "pool_type": "argmax",
    "proj_bias": False, "proj_type": "linear", "output_tokens": False, "act_kwargs": None,
    "norm_kwargs": None, "hf_model_name": None,
}
_REQUIRED = ("embed_dim", "vision_cfg", "text_cfg")


def _deviations(section: str, values: dict, allowed: dict) -> list[str]:
    """`section.key = value` for every key of `values` that our CLIP cannot reproduce."""
    return [f"{section}{key} = {value!r}" for key, value in values.items()
            if key not in allowed or (allowed[key] is not _ANY and value != allowed[key])]


def _square(size: Any, name: str) -> list[str]:
    if isinstance(size, (list, tuple)) and (len(size) != 2 or size[0] != size[1]):
        return [f"vision_cfg.{name} = {size!r} (not square)"]
    return []


def _side(size: int | list[int]) -> int:
    return size[0] if isinstance(size, (list, tuple)) else size


def _is_resnet(vision_cfg: dict) -> bool:
    return isinstance(vision_cfg.get("layers", 12), (list, tuple))


def unsupported_options(model_cfg: dict) -> list[str]:
    """What in open_clip's model config `model_cfg` our `CLIP` cannot reproduce, one
    `key = value` each (empty for a plain CLIP)."""
    vision, text = model_cfg.get("vision_cfg", {}), model_cfg.get("text_cfg", {})
    problems = [f"no {key}" for key in _REQUIRED if key not in model_cfg]
    problems += (_deviations("", model_cfg, _TOP_LEVEL) + _deviations("vision_cfg.", vision, _VISION)
                 + _deviations("text_cfg.", text, _TEXT))
    if _is_resnet(vision):
        if len(vision["layers"]) != 4:
            problems.append(f"vision_cfg.layers = {vision['layers']!r} (a ResNet has 4 stages)")
        if vision.get("patch_size") is not None:
            problems.append(f"vision_cfg.patch_size = {vision['patch_size']!r} (a ResNet has no patches)")
    else:
        problems += _square(vision.get("patch_size", 16), "patch_size")
    return problems + _square(vision.get("image_size", 224), "image_size")


def is_plain_clip(model_cfg: dict) -> bool:
    """True when open_clip's model config describes a CLIP that `build_from_open_clip_config`
    builds exactly: a ViT or ModifiedResNet image tower and OpenAI's causal text transformer
    pooled at the end-of-text token, with the CLIP tokenizer (`unsupported_options` says what
    else it is)."""
    return not unsupported_options(model_cfg)


def build_from_open_clip_config(model_cfg: dict, quick_gelu: bool | None = None) -> CLIP:
    """Our `CLIP` for open_clip's model config `model_cfg`, randomly initialised (OpenAI's
    initialisation; layer scales at `ls_init_value`). Its state dict has the keys and shapes
    of open_clip's model for that config.

    `quick_gelu` overrides the config's activation (open_clip's `force_quick_gelu`; OpenAI's
    weights need QuickGELU); None keeps the config's (`quick_gelu`, default False: GELU).
    A config that is not a plain CLIP raises `ValueError` naming what is not."""
    problems = unsupported_options(model_cfg)
    if problems:
        raise ValueError(f"not a standard CLIP that clip.CLIP builds: {', '.join(problems)}")
    vision, text = model_cfg["vision_cfg"], model_cfg["text_cfg"]
    resnet = _is_resnet(vision)
    # Defaults are open_clip's (CLIPVisionCfg, CLIPTextCfg) for keys a config leaves out.
    return CLIP(
        embed_dim=model_cfg["embed_dim"],
        image_resolution=_side(vision.get("image_size", 224)),
        vision_layers=tuple(vision["layers"]) if resnet else vision.get("layers", 12),
        vision_width=vision.get("width", 768),
        vision_patch_size=None if resnet else _side(vision.get("patch_size", 16)),
        context_length=text.get("context_length", 77),
        vocab_size=text.get("vocab_size", 49408),
        transformer_width=text.get("width", 512),
        transformer_heads=text.get("heads", 8),
        transformer_layers=text.get("layers", 12),
        vision_head_width=vision.get("head_width", 64),
        vision_mlp_ratio=vision.get("mlp_ratio", 4.0),
        vision_ls_init_value=vision.get("ls_init_value"),
        quick_gelu=model_cfg.get("quick_gelu", False) if quick_gelu is None else quick_gelu,
    )


def convert_open_clip_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The state dict of an open_clip plain CLIP, keyed for `CLIP.load_state_dict(strict=True)`
    of the model `build_from_open_clip_config` builds for the same config.

    open_clip's names are already ours; what changes is the "module." prefix that open_clip's
    training script saves (DistributedDataParallel), which is removed. The tensors are shared,
    not copied."""
    prefix = "module."
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix):]: value for key, value in state_dict.items()}
    return dict(state_dict)
