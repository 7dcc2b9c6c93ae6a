"""Optimiser and learning-rate schedule (the paper's: AdamW, cosine to 0 over the epochs)."""
import math

import torch

from tailclip.config import Config


def build_optimizer(cfg: Config, params, device: torch.device) -> torch.optim.Optimizer:
    """AdamW (betas 0.9/0.98, eps 1e-9, as CLIP's fine-tuning), Adam or SGD with momentum.

    Weight decay applies to every parameter, as in the paper. AdamW/Adam use the fused
    kernel: on CUDA one launch for all parameters instead of one per tensor; on the CPU one
    pass over memory instead of about ten (which matters for a tiny CLIP, whose 49,408-token
    embedding is nearly all of its parameters; BENCHMARKS.md).
    """
    params = [p for p in params if p.requires_grad]
    fused = device.type in ("cuda", "cpu")
    if cfg.optimizer == "AdamW":
        return torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9,
                                 weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "Adam":
        return torch.optim.Adam(params, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9,
                                weight_decay=cfg.weight_decay, fused=fused)
    if cfg.optimizer == "SGD":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def cosine_factor(epoch: int, epochs: int) -> float:
    """The schedule's lr at ``epoch`` (0-based) as a fraction of the base lr: 1 at epoch 0,
    0 after the last one."""
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, start_epoch: int = 0):
    """Cosine annealing from ``lr`` to 0 over ``epochs``, at ``start_epoch``; the caller steps
    it once per epoch.

    The closed form (not the chained update of ``CosineAnnealingLR``) depends on the epoch
    alone, so a resumed run rebuilds it from the epoch reached, for its ``lr`` and ``epochs``
    as they are now: an extended run continues on the cosine of its new length.
    """
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = cfg.lr
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: cosine_factor(epoch, cfg.epochs),
                                             last_epoch=start_epoch - 1)
