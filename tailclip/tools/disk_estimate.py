"""The disk a sweep's checkpoints take, estimated before it starts from the backbone's
parameter count (counted on PyTorch's meta device: no weights, no memory) and the
checkpoints each run's config saves.

A checkpoint holds float32 weights whatever the training precision: 4 bytes per trained
parameter (in the prompt modes on OpenAI's weights, only the trained ones). A best
checkpoint holds the weights alone; the newest also the optimiser's state, one tensor the
size of the weights per state (AdamW and Adam: 2, SGD: 1). The config, records and class
names are a few kilobytes; TensorBoard's events and metrics.jsonl under a megabyte a run.
"""
import functools

import torch

import clip
from tailclip.config import OPEN_CLIP_PREFIX, PROMPT_MODES, Config
from tailclip.engine.run_folder import BEST_MAP_CHECKPOINT, BEST_TAIL_CHECKPOINT, NEWEST_CHECKPOINT
from tailclip.wording import count

BYTES_PER_WEIGHT = 4
OPTIMIZER_STATES = {"AdamW": 2, "Adam": 2, "SGD": 1}


@functools.cache
def _parameters(model_name: str) -> tuple[int, int]:
    """(all parameters and buffers, the image tower's parameters) of an OpenAI-architecture CLIP."""
    with torch.device("meta"):
        model = clip.create_model(model_name)
    return (sum(t.numel() for t in model.state_dict().values()),
            sum(p.numel() for p in model.visual.parameters()))


def saved_weights(cfg: Config) -> int | None:
    """How many weights a checkpoint of ``cfg`` holds; None for an open_clip backbone (not counted)."""
    if cfg.model_name.startswith(OPEN_CLIP_PREFIX):
        return None
    every, image_tower = _parameters(cfg.model_name)
    if cfg.finetune in PROMPT_MODES and cfg.pretrained:  # the prompts (a few thousand) and what trains with them
        return image_tower if cfg.finetune == "prompt+visual" else 0
    return every


def checkpoint_sizes(cfg: Config) -> dict[str, int] | None:
    """The checkpoint files a run of ``cfg`` keeps, with their estimated size in bytes."""
    weights = saved_weights(cfg)
    if weights is None:
        return None
    best = BYTES_PER_WEIGHT * weights
    saved = {BEST_MAP_CHECKPOINT: cfg.save_best_mAP_checkpoint, BEST_TAIL_CHECKPOINT: cfg.save_best_tail_mAP_checkpoint,
             NEWEST_CHECKPOINT: cfg.save_newest_checkpoint}
    sizes = {BEST_MAP_CHECKPOINT: best, BEST_TAIL_CHECKPOINT: best,
             NEWEST_CHECKPOINT: best * (1 + OPTIMIZER_STATES[cfg.optimizer])}
    return {name: size for name, size in sizes.items() if saved[name]}


def gigabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.0f} MB"


def sweep_disk_line(configs: list[Config], keep_best: bool, at_once: int) -> str:
    """What a sweep of runs with ``configs`` needs on disk for its checkpoints, when every run
    keeps its checkpoints, or, with ``keep_best``, finished runs their best ones only (the
    ``at_once`` runs in progress hold their newest too)."""
    sizes = [checkpoint_sizes(cfg) for cfg in configs]
    if None in sizes:
        return "disk: not estimated (an open_clip backbone: its parameter count is not known before it loads)"
    full = [sum(run.values()) for run in sizes]
    newest = [run.get(NEWEST_CHECKPOINT, 0) for run in sizes]
    each = ", ".join(f"{name} {gigabytes(size)}" for name, size in sizes[0].items())
    keeping_all = sum(full)
    keeping_best = sum(full) - sum(newest) + at_once * max(newest)
    line = f"disk: about {gigabytes(keep_best and keeping_best or keeping_all)} for the checkpoints of " \
           f"{count(len(configs), 'run')}"
    line += f" (a run of {configs[0].model_name}: {each})"
    if keep_best:
        return line + f"; finished runs keep their best checkpoints only (all: {gigabytes(keeping_all)})"
    return line + f"; with --keep best, finished runs delete their newest checkpoint: {gigabytes(keeping_best)}"
