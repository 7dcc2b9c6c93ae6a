"""Mixed precision: autocast dtype, gradient scaler, TF32.

Master weights stay float32 in every mode; only the forward pass runs in bf16/fp16 under
``torch.autocast``, and callers compute their losses in float32.
"""
import contextlib

import torch

from tailclip.config import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` is bf16 on CUDA and fp32 elsewhere; fp16 needs CUDA (it has no CPU scaler use)."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision = 'fp16' needs a CUDA device; use 'bf16' or 'fp32' on the CPU")
    return precision


def autocast(precision: str, device: torch.device):
    """The forward-pass context for ``precision`` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def grad_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler:
    """A loss scaler, active only for fp16 (bf16 has float32's exponent range)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")


def allow_tf32() -> None:
    """TF32 matmuls and convolutions on Ampere+ GPUs: ~fp32 accuracy at tensor-core speed."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
