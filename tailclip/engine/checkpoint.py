"""Checkpoints: atomic writes, loading with clear errors, and random-number states.

A TailCLIP checkpoint is a plain dict that is enough on its own to rebuild and use the model:
weights, config, class names, label prompts and backbone name, with the run's progress and
records; the newest one also holds the optimiser, scheduler, scaler and random-number
states that `--resume` needs (`tailclip.engine.training_state`). Since version 3 the run's
records are in it and the best checkpoints leave the optimiser out. It holds only tensors and
Python primitives, so it loads with ``torch.load(weights_only=True)``: opening a checkpoint
never runs code from the file. Since version 2 it carries a checksum of its contents
(``checksum``: CRC-32 over every tensor's bytes and every other value), which every load
verifies: flipped bits on a disk or in a copy are an error naming the file, never weights
used silently.
"""
import random
import zlib
from pathlib import Path

import numpy as np
import torch

from tailclip.engine.files import write_atomic
from tailclip.errors import MissingFileError, TailCLIPError

FORMAT = "tailclip-checkpoint"
VERSION = 3
CHECKSUM_KEY = "checksum"


class CheckpointError(TailCLIPError, RuntimeError):
    """A file that is not a usable TailCLIP checkpoint."""


def save_atomic(obj, path) -> Path:
    """``torch.save(obj)`` to ``path`` with `write_atomic`."""
    return write_atomic(path, lambda f: torch.save(obj, f))


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load a TailCLIP checkpoint written by training; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"checkpoint not found: {path}")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # noqa: BLE001 -- garbage makes the unpickler fail in many ways
        # Not torch's message: it advises weights_only=False, which would run code from the file.
        raise CheckpointError(
            f"{path} is not a TailCLIP checkpoint: it cannot be read as one (a truncated or "
            "corrupt file, or one holding Python objects other than tensors); checkpoints are "
            "written by train.py"
        ) from error
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a TailCLIP checkpoint (no '{FORMAT}' marker); "
            "checkpoints are written by train.py"
        )
    if checkpoint.get("version", 0) > VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {checkpoint['version']}, newer than this code "
            f"understands ({VERSION}); update TailCLIP"
        )
    # Version 1 checkpoints were written before checksums.
    if checkpoint.get("version", 0) >= 2 and checkpoint.get(CHECKSUM_KEY) != content_checksum(checkpoint):
        raise CheckpointError(
            f"{path} is damaged: its contents do not match the checksum written with them (a "
            "disk or copy error); use another checkpoint or train again")
    return checkpoint


def with_checksum(checkpoint: dict) -> dict:
    """``checkpoint`` with the checksum of its contents that `load_checkpoint` verifies."""
    return {**checkpoint, CHECKSUM_KEY: content_checksum(checkpoint)}


def content_checksum(checkpoint: dict) -> str:
    """CRC-32 of a checkpoint's contents (its ``checksum`` entry left out): the bytes of every
    tensor with its dtype and shape, the repr of every other value, in the dicts' order
    (which torch.save keeps)."""
    crc = 0
    for key, value in checkpoint.items():
        if key != CHECKSUM_KEY:
            crc = _crc(value, _crc(key, crc))
    return f"crc32:{crc:08x}"


def _crc(value, crc: int) -> int:
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        crc = zlib.crc32(f"tensor {tensor.dtype} {tuple(tensor.shape)}".encode(), crc)
        return zlib.crc32(tensor.reshape(-1).view(torch.uint8).numpy(), crc)
    if isinstance(value, dict):
        crc = zlib.crc32(f"dict {len(value)}".encode(), crc)
        for key, item in value.items():
            crc = _crc(item, _crc(key, crc))
        return crc
    if isinstance(value, (list, tuple)):
        crc = zlib.crc32(f"{type(value).__name__} {len(value)}".encode(), crc)
        for item in value:
            crc = _crc(item, crc)
        return crc
    return zlib.crc32(repr(value).encode(), crc)


def rng_states() -> dict:
    """The python, numpy, torch CPU and (when present) CUDA random-number states."""
    name, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    return {
        "python": random.getstate(),
        # numpy's key array is stored as a tensor so that the checkpoint stays weights_only-safe.
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss,
                  cached_gaussian),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def restore_rng_states(states: dict) -> None:
    """Inverse of `rng_states`. CUDA states are restored only when CUDA is present."""
    random.setstate(states["python"])
    name, keys, position, has_gauss, cached_gaussian = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss,
                         cached_gaussian))
    torch.set_rng_state(states["torch"])
    if states["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
