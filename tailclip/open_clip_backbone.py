"""open_clip's models as TailCLIP backbones: ``model_name = "open_clip:<open_clip model name>"``.

A standard CLIP (ViT or ModifiedResNet image tower, OpenAI's text transformer:
``clip.open_clip_compat.is_plain_clip``) is built by our ``clip`` package and loads open_clip's
weights, so that everything our CLIP offers (prompt learning, positional-embedding
interpolation, padding trimming) keeps working. Other families (SigLIP / SigLIP 2, EVA02,
CoCa, ...) run as open_clip's own model objects inside `OpenCLIPBackbone`, with open_clip's
tokenizer for the model (`OpenCLIPTokenizer`).

``pretrained`` is an open_clip pretrained tag (weights found through open_clip's registry and
downloaded into our weights cache, ``$TAILCLIP_CACHE`` or ``~/.cache/clip``, under
``open_clip/``), a checkpoint file, or False (random weights). open_clip is an optional
dependency, imported only here.
"""
from __future__ import annotations

import contextlib
import functools
import os
import pickle
import urllib.parse
from pathlib import Path

import torch
import torch.nn as nn

from clip.factory import cache_dir, check_weights_file

from .config import OPEN_CLIP_PREFIX, close_matches, resolve_path
from .errors import TailCLIPError

INSTALL_HINT = "pip install open_clip_torch"
# Where an open_clip registry entry of the form "org/repo/" or "org/repo/file" is served.
HF_HUB_URL = "https://huggingface.co/{repo}/resolve/main/{filename}"
HF_DEFAULT_FILENAME = "open_clip_pytorch_model.bin"  # open_clip's name for "org/repo/" entries


class OpenCLIPError(TailCLIPError, ValueError):
    """An open_clip backbone cannot be built: open_clip missing, an unknown model name or
    pretrained tag, weights that cannot be downloaded."""


def is_open_clip_name(model_name: str) -> bool:
    return model_name.startswith(OPEN_CLIP_PREFIX)


def open_clip_model_name(model_name: str) -> str:
    """"open_clip:ViT-B-16" -> "ViT-B-16"."""
    return model_name[len(OPEN_CLIP_PREFIX):]


def import_open_clip(model_name: str):
    """The open_clip module, or an error that says how to install it."""
    try:
        import open_clip
    except ImportError:
        raise OpenCLIPError(f"model_name = {model_name!r} needs open_clip, which is not installed: "
                            f"{INSTALL_HINT}") from None
    return open_clip


def model_config(model_name: str) -> dict:
    """open_clip's config of ``model_name`` ("open_clip:<name>"); an unknown name lists the
    close matches."""
    open_clip = import_open_clip(model_name)
    name = open_clip_model_name(model_name)
    config = open_clip.get_model_config(name)
    if config is None:
        raise OpenCLIPError(f"unknown open_clip model {name!r} in model_name = {model_name!r}"
                            f"{close_matches(name, open_clip.list_models())} "
                            "(open_clip.list_models() lists them all)")
    return config


def is_standard_clip(model_name: str) -> bool:
    """Whether our ``clip`` package builds the open_clip model ``model_name``."""
    from clip.open_clip_compat import is_plain_clip

    return is_plain_clip(model_config(model_name))


def native_size(model_name: str) -> tuple[int, int]:
    """(input resolution, text context length) of the open_clip model, from its config."""
    config = model_config(model_name)
    image_size = config["vision_cfg"].get("image_size", 224)
    side = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    return side, config["text_cfg"].get("context_length", 77)


# ---------------------------------------------------------------- weights


def pretrained_entry(model_name: str, tag: str) -> dict:
    """open_clip's registry entry of ``tag`` for the model, or {} when it has none."""
    open_clip = import_open_clip(model_name)
    return open_clip.pretrained.get_pretrained_cfg(open_clip_model_name(model_name), tag)


def weights_source(entry: dict) -> tuple[str, str]:
    """(address, cache path relative to the weights cache) of a registry entry: the
    Hugging Face copy when there is one (the file open_clip itself prefers), else the URL."""
    if entry.get("hf_hub"):
        repo, filename = os.path.split(entry["hf_hub"])
        filename = filename or HF_DEFAULT_FILENAME
        return HF_HUB_URL.format(repo=repo, filename=filename), f"{repo.replace('/', '--')}/{filename}"
    url = entry["url"]
    return url, Path(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name


def download_weights(model_name: str, tag: str, entry: dict) -> Path:
    """The weights of a registry entry, in ``<weights cache>/open_clip/``: downloaded with a
    progress bar and resumed after an interruption (``clip.download``); a file already there,
    placed by hand or not, is used as it is."""
    from clip.download import DownloadError, download

    if entry.get("file"):
        return Path(entry["file"])
    url, relative = weights_source(entry)
    target = cache_dir() / "open_clip" / relative
    # Only OpenAI's addresses carry the file's full sha256.
    sha256 = url.split("/")[-2] if "openaipublic" in url else None
    try:
        return download(url, target.parent, sha256=sha256, filename=target.name)
    except DownloadError as error:
        raise OpenCLIPError(f"could not download the {tag!r} weights of {model_name!r} from {url} "
                            f"({error.__cause__ or error}); offline, place that file by hand at {target}") from None


def checkpoint_path(model_name: str, pretrained: bool | str) -> tuple[Path | None, dict]:
    """(checkpoint file or None for random weights, registry entry or {}) for ``pretrained``:
    False, a pretrained tag of the model, or a checkpoint file."""
    if pretrained is False:
        return None, {}
    open_clip = import_open_clip(model_name)
    name = open_clip_model_name(model_name)
    entry = pretrained_entry(model_name, pretrained)
    if entry:
        return download_weights(model_name, pretrained, entry), entry
    path = resolve_path(pretrained)
    if path.is_file():
        return path, {}
    tags = open_clip.pretrained.list_pretrained_tags_by_model(name)
    known = f"its tags: {', '.join(tags)}" if tags else "open_clip has no pretrained weights for it"
    raise OpenCLIPError(f"pretrained = {pretrained!r} is neither a checkpoint file nor a pretrained tag "
                        f"of {name!r}{close_matches(pretrained, tags)} ({known})")


def read_state_dict(model_name: str, path: Path) -> dict[str, torch.Tensor]:
    """The weights in an open_clip checkpoint (.bin, .pt, .safetensors; "module." prefixes and
    a "state_dict" wrapper removed)."""
    return import_open_clip(model_name).factory.load_state_dict(str(path))


# ---------------------------------------------------------------- models


class OpenCLIPBackbone(nn.Module):
    """An open_clip model behind the interface TailCLIP uses from ``clip.CLIP``:
    ``encode_image``, ``encode_text``, ``logit_scale`` (log of the scale), ``logit_bias``
    (SigLIP; None otherwise), ``context_length``, ``input_resolution``.

    Its text tower may read the padding (SigLIP pools the last position, CoCa's class token
    sits after it), so token ids are never trimmed (``trims_text_padding``). CoCa's captioning
    decoder is not part of TailCLIP's objective and is left out.
    """

    trims_text_padding = False

    def __init__(self, model: nn.Module, context_length: int, input_resolution: int):
        super().__init__()
        self.without_decoder = hasattr(model, "text_decoder")
        if self.without_decoder:
            del model.text_decoder
        self.model = model
        self.context_length = context_length
        self.input_resolution = input_resolution

    @property
    def logit_scale(self) -> nn.Parameter:
        return self.model.logit_scale

    @property
    def logit_bias(self) -> nn.Parameter | None:
        return getattr(self.model, "logit_bias", None)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each residual block of both towers in the backward pass (open_clip's)."""
        # CoCa's own method also reaches its captioning decoder, which is left out here.
        modules = (self.model.visual, self.model.text) if self.without_decoder else (self.model,)
        for module in modules:
            module.set_grad_checkpointing(enable)


def build_open_clip_backbone(model_name: str, pretrained: bool | str) -> nn.Module:
    """The backbone ``model_name`` ("open_clip:<name>") on the CPU, in float32: our
    ``clip.CLIP`` for a standard CLIP, else an `OpenCLIPBackbone`; weights as
    ``checkpoint_path`` finds them (random ones for False)."""
    config = model_config(model_name)
    path, entry = checkpoint_path(model_name, pretrained)
    # Weights trained with QuickGELU need it, also under a config name without "-quickgelu"
    # (open_clip's "ViT-H-14-378" with "dfn5b").
    quick_gelu = True if entry.get("quick_gelu") else None
    if is_standard_clip(model_name):
        return _standard_clip(model_name, config, path, quick_gelu)
    return _open_clip_model(model_name, path, quick_gelu)


@contextlib.contextmanager
def weights_must_fit(model_name: str, path: Path):
    """A checkpoint of another architecture, or a file that is no checkpoint, is the user's
    error, named in one line."""
    check_weights_file(path)
    try:
        yield
    except (pickle.UnpicklingError, EOFError, KeyError):  # torch.load's, on a damaged file
        raise OpenCLIPError(f"{path}: cannot be read as a weights file (truncated or damaged, or "
                            "holding Python objects other than tensors)") from None
    except RuntimeError as error:
        detail = " ".join(str(error).split())  # torch's message spans many lines
        raise OpenCLIPError(f"{path}: the weights do not fit {model_name!r}: "
                            f"{detail[:300]}{'...' if len(detail) > 300 else ''}") from None


def _standard_clip(model_name: str, config: dict, path: Path | None, quick_gelu: bool | None) -> nn.Module:
    from clip.open_clip_compat import build_from_open_clip_config, convert_open_clip_state_dict

    model = build_from_open_clip_config(config, quick_gelu=quick_gelu)
    if path is not None:
        with weights_must_fit(model_name, path):
            model.load_state_dict(convert_open_clip_state_dict(read_state_dict(model_name, path)))
    return model


def _open_clip_model(model_name: str, path: Path | None, quick_gelu: bool | None) -> OpenCLIPBackbone:
    open_clip = import_open_clip(model_name)
    name = open_clip_model_name(model_name)
    # On the default device, as clip.create_model: `with torch.device("meta")` costs no memory.
    model = open_clip.create_model(name, pretrained=None, force_quick_gelu=bool(quick_gelu),
                                   pretrained_text=False, device=torch.get_default_device())
    if path is not None:
        with weights_must_fit(model_name, path):
            open_clip.load_checkpoint(model, str(path))
    input_resolution, context_length = native_size(model_name)
    return OpenCLIPBackbone(model.float().eval(), context_length, input_resolution)


# ---------------------------------------------------------------- tokenizers


class OpenCLIPTokenizer:
    """open_clip's tokenizer for a model, with the interface of `tailclip.text_tokens`:
    ``tokenizer(texts)`` -> ids [N, context_length], ``encode(text)`` -> ids without the
    special tokens (to fit captions at a word boundary), ``trim_padding`` (nothing is cut:
    see `OpenCLIPBackbone`)."""

    def __init__(self, tokenizer, context_length: int):
        self.tokenizer = tokenizer
        self.context_length = context_length

    def __call__(self, texts: list[str]) -> torch.Tensor:
        return self.tokenizer(texts, context_length=self.context_length).long()

    def encode(self, text: str) -> list[int]:
        if hasattr(self.tokenizer, "encode"):  # open_clip's BPE SimpleTokenizer
            return self.tokenizer.encode(text)
        return self.tokenizer.tokenizer.encode(text, add_special_tokens=False)  # Hugging Face's

    @staticmethod
    def trim_padding(tokens: torch.Tensor) -> torch.Tensor:
        return tokens


@functools.cache
def open_clip_tokenizer(model_name: str, context_length: int) -> OpenCLIPTokenizer:
    """open_clip's tokenizer of the model ``model_name`` ("open_clip:<name>")."""
    open_clip = import_open_clip(model_name)
    name = open_clip_model_name(model_name)
    model_config(model_name)  # an unknown name is our error, not open_clip's fallback tokenizer
    try:
        tokenizer = open_clip.get_tokenizer(name, context_length=context_length)
    except ImportError as error:  # Hugging Face tokenizers (SigLIP's) need transformers
        raise OpenCLIPError(f"the tokenizer of {model_name!r} needs {error.name or 'transformers'}, "
                            "which is not installed: pip install transformers") from None
    except OSError as error:  # fetched from Hugging Face on first use
        raise OpenCLIPError(f"could not load the tokenizer of {model_name!r} "
                            f"({str(error).splitlines()[0]}); it is fetched from Hugging Face on first use") from None
    return OpenCLIPTokenizer(tokenizer, context_length)
