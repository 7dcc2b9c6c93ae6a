"""Optimiser and learning-rate schedule (the paper's: AdamW, cosine to 0 over the epochs)."""
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


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer):
    """Cosine annealing from ``lr`` to 0 over ``epochs``; the caller steps it once per epoch."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=0.0)
