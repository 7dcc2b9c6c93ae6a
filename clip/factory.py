"""Building CLIP models by name and loading checkpoints (OpenAI TorchScript archives or plain
state dicts)."""
import os
import pickle
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import torch
from PIL import Image

from .architectures import ARCHITECTURES, CHECKPOINT_URLS, Architecture
from .errors import ClipError, ClipFileNotFoundError
from .model import CLIP, build_model
from .transform import clip_transform


class WeightsFileError(ClipError, RuntimeError):
    """A weights file that does not hold a CLIP model (unreadable, or other weights)."""


def available_models() -> list[str]:
    """Names of the models with official OpenAI weights, which `load` accepts. `create_model`
    also builds these (randomly initialised), plus the tiny test architectures: every key of
    `clip.architectures.ARCHITECTURES`."""
    return list(CHECKPOINT_URLS)


def _architecture(name: str) -> Architecture:
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown CLIP model {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def model_resolution(name: str) -> int:
    """The input image size (pixels, square) of model `name`."""
    return _architecture(name).image_resolution


def create_model(name: str) -> CLIP:
    """A randomly initialised CLIP (OpenAI's initialisation) of any architecture in
    `clip.architectures.ARCHITECTURES`, including "RN-tiny" and "ViT-tiny". Builds on the
    current default device, so `with torch.device("meta"):` gives a model without memory."""
    return CLIP(**asdict(_architecture(name)))


def cache_dir(download_root: str | os.PathLike | None = None) -> Path:
    """Where checkpoints and the vocabulary are cached: `download_root`, else
    `$TAILCLIP_CACHE`, else `~/.cache/clip`."""
    return Path(download_root or os.environ.get("TAILCLIP_CACHE") or "~/.cache/clip").expanduser()


def _is_torchscript_archive(path: Path) -> bool:
    # TorchScript zips hold a constants.pkl beside the pickled module; torch.save zips do not.
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(Path(name).name == "constants.pkl" for name in archive.namelist())


def check_weights_file(path: str | os.PathLike) -> None:
    """`WeightsFileError` naming ``path`` when its first bytes are those of no weights file
    (a PyTorch zip or legacy pickle, a TorchScript archive, safetensors): a text or an HTML
    page, as a failed download leaves, gets one line saying what it is, never torch's
    unpickling error (whose advice, ``weights_only=False``, would run code from the file)."""
    with open(path, "rb") as f:
        head = f.read(512)
    is_zip, is_pickle = head.startswith(b"PK\x03\x04"), head.startswith(b"\x80")
    is_safetensors = len(head) > 8 and head[8:9] == b"{"  # 8-byte header length, then JSON
    if is_zip or is_pickle or is_safetensors:
        return
    if not head:
        what = "an empty file"
    elif b"<html" in head.lower() or head.lstrip().lower().startswith(b"<!doctype html"):
        what = "an HTML page (what a failed download often leaves)"
    else:
        try:
            what = f"text ({head[:40].decode().strip()!r}{'...' if len(head) > 40 else ''})"
        except UnicodeDecodeError:
            what = "bytes of another format"
    raise WeightsFileError(f"{path} is not a weights file (a PyTorch checkpoint or safetensors): it holds {what}")


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The weights in a checkpoint file: an OpenAI TorchScript archive (whose graph is never
    run), a plain state dict, or a dict wrapping one under "state_dict" or "model"."""
    path = Path(path)
    check_weights_file(path)
    if _is_torchscript_archive(path):
        with warnings.catch_warnings():
            # torch.jit is deprecated, but it is the only reader of OpenAI's archives.
            warnings.filterwarnings("ignore", message=".*torch.jit.load", category=FutureWarning)
            return torch.jit.load(str(path), map_location="cpu").state_dict()
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for wrapper_key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(wrapper_key), dict):
            checkpoint = checkpoint[wrapper_key]
    if not isinstance(checkpoint, dict) or not all(torch.is_tensor(v) for v in checkpoint.values()):
        raise ValueError(f"{path} holds no state dict (expected a dict of tensors)")
    return checkpoint


def _checkpoint_file(name: str, download_root: str | os.PathLike | None) -> Path:
    """The cached official checkpoint of `name`, downloaded (and sha256-checked) if needed."""
    from .download import download  # only needed for names; a local path loads without it

    url = CHECKPOINT_URLS[name]
    sha256 = url.split("/")[-2]
    return download(url, cache_dir(download_root), sha256=sha256, filename=url.split("/")[-1])


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", jit: bool = False,
         download_root: str | os.PathLike | None = None) -> tuple[CLIP, Callable[[Image.Image], torch.Tensor]]:
    """(model, preprocess): a float32 CLIP in eval mode on `device` and its image transform.

    `name_or_path` is one of `available_models()` (downloaded to the cache on first use) or a
    checkpoint file."""
    if jit:
        raise ValueError("jit=True is not supported: TailCLIP reads the weights out of TorchScript "
                         "archives and never runs their graphs; call clip.load(..., jit=False)")
    model = load_model(name_or_path, device, download_root)
    return model, clip_transform(model.visual.input_resolution)


def load_model(name_or_path: str | os.PathLike, device: str | torch.device = "cpu",
               download_root: str | os.PathLike | None = None) -> CLIP:
    """`load`'s model alone, without the preprocessing (which imports torchvision)."""
    if str(name_or_path) in CHECKPOINT_URLS:
        path = _checkpoint_file(str(name_or_path), download_root)
    elif Path(name_or_path).is_file():
        path = Path(name_or_path)
    else:
        raise ClipFileNotFoundError(f"{str(name_or_path)!r} is neither a CLIP model with weights "
                                    f"({', '.join(available_models())}) nor a checkpoint file "
                                    "(clip.create_model builds any architecture with random weights)")
    check_weights_file(path)
    try:
        model = build_model(read_state_dict(path))
    except (pickle.UnpicklingError, EOFError, KeyError) as error:  # torch.load's, on a damaged file
        raise WeightsFileError(f"{path} does not hold CLIP weights: it cannot be read as a weights "
                               "file (truncated or damaged, or holding Python objects other than "
                               "tensors)") from error
    # What torch.jit.load and build_model raise for a file that is not CLIP's weights.
    except (ValueError, RuntimeError) as error:
        raise WeightsFileError(f"{path} does not hold CLIP weights: {error}") from error
    return model.to(device)
