"""Numerics of a run: autocast dtype, gradient scaler, TF32.

Master weights stay float32 in every mode; only the forward pass runs in bf16/fp16 under
``torch.autocast``, and callers compute their losses in float32. TF32 (``tf32 = True``) is
opt-in: ``tf32 = False`` leaves PyTorch's flags as they are, which by default is what the
paper ran (float32 matmuls in full precision, cuDNN's own default for convolutions).
"""
import contextlib

import torch

from tailclip.config import ConfigError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}

# torch >= 2.9 sets TF32 per backend and operator (`fp32_precision`); the `allow_tf32`
# attributes before it are deprecated there, and reading one after a write through the
# per-operator API alone raises.
PER_OPERATOR_TF32 = hasattr(torch.backends.cuda.matmul, "fp32_precision") and hasattr(
    getattr(torch.backends.cudnn, "conv", None), "fp32_precision")


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


def tf32_changes(tf32: bool, device: torch.device) -> dict[str, str]:
    """The TF32 flags ``set_tf32`` sets, as {"matmul" | "conv": "tf32"}: none unless ``tf32``
    on CUDA (TF32 is a CUDA tensor-core format; float32 runs as it is elsewhere)."""
    if not (tf32 and device.type == "cuda"):
        return {}
    return {"matmul": "tf32", "conv": "tf32"}


def set_tf32(tf32: bool, device: torch.device) -> None:
    """Allow TF32 for CUDA matmuls and cuDNN convolutions when ``tf32`` (about float32's range
    with a 10-bit mantissa, at tensor-core speed); otherwise change nothing."""
    for operator, mode in tf32_changes(tf32, device).items():
        if PER_OPERATOR_TF32:
            _flag_owner(operator).fp32_precision = mode
        if operator == "matmul":
            # Also through the older flag, which then agrees: torch's own code that still
            # reads it (inductor's matmul lowerings, in torch 2.10 for one) would raise.
            torch.backends.cuda.matmul.allow_tf32 = True
        elif not PER_OPERATOR_TF32:
            torch.backends.cudnn.allow_tf32 = True


def tf32_flags() -> dict[str, str]:
    """PyTorch's current TF32 settings, {"matmul": ..., "conv": ...}, read through the same API
    that ``set_tf32`` writes (``"tf32"`` where allowed)."""
    if PER_OPERATOR_TF32:
        return {operator: _flag_owner(operator).fp32_precision for operator in ("matmul", "conv")}
    return {"matmul": "tf32" if torch.backends.cuda.matmul.allow_tf32 else "ieee",
            "conv": "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"}


def _flag_owner(operator: str):
    return torch.backends.cuda.matmul if operator == "matmul" else torch.backends.cudnn.conv
