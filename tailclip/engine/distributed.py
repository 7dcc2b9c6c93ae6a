"""Several processes (GPUs, nodes) under ``torchrun``: set-up, the global batch, sharded evaluation.

``torchrun --nproc_per_node=N train.py --config=...`` starts N processes and sets ``RANK``,
``LOCAL_RANK`` and ``WORLD_SIZE``; without them everything here is a single process and a
no-op. N processes with ``batch_size`` B (the global batch, B / N per process) compute the
same loss and take the same optimiser step as one process with batch B:

- Every process computes the whole objective on the global batch (``GlobalBatchObjective``):
  image and caption embeddings, class logits and targets of all processes are gathered, with
  gradient, and the loss value is the single-process one in every process. BAL is computed
  on the gathered logits as well, because it normalises them by the maximum over the whole
  batch (a per-process maximum would change it).
- The gather's backward sums, for each process's own rows, the gradients that all N
  processes send back, so a process's gradient through its rows is N times the
  single-process gradient of those rows; ``DistributedDataParallel`` averages over the N
  processes, which leaves exactly the single-process gradient (the sum over all rows).
  Parameters that the loss uses directly (``logit_scale`` in the contrastive term) get the
  full gradient in every process, which the average keeps. So no loss is rescaled.
- Evaluation: the single-process batches (``eval_batch_size`` consecutive images) are dealt
  out, process r scoring batches r, r + N, r + 2N, ... (``eval_shard``); ``gather_eval``
  brings the scores back in dataset order, so that every process computes the metrics on
  exactly the single-process predictions, and the loss is the mean of the same batch losses.
"""
import contextlib
import dataclasses
import datetime
import os
import warnings

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from tailclip.config import ConfigError
from tailclip.errors import DeviceError, TailCLIPError

# Processes waiting while the first one downloads weights or builds an image cache can wait
# far longer than NCCL's default 10-minute collective timeout; they wait in a CPU group.
PREPARATION_TIMEOUT = datetime.timedelta(hours=2)
# Made by `init_distributed` (`_create_groups`) as the processes join.
_host_group = None
_gather_group = None


@dataclasses.dataclass(frozen=True)
class DistInfo:
    """This process's place in the run; ``rank 0 of 1`` on the CPU or GPU when alone."""
    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool


def rank_and_world() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) outside ``torch.distributed``."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Only the main process (rank 0) logs, prints progress and writes checkpoints."""
    return rank_and_world()[0] == 0


def resolve_device(name: str, local_rank: int = 0, world_size: int = 1,
                   cpu_hint: str = "device = 'cpu' or 'auto'") -> torch.device:
    """The device that ``name``, a valid value of the config option ``device``, names for
    this process. ``cpu_hint``: how the caller's user picks the CPU instead (a config
    option, or a command-line flag).

    ``"auto"`` is CUDA when available, else the CPU. With several processes, ``"auto"`` and
    ``"cuda"`` mean this process's own GPU, ``cuda:LOCAL_RANK``.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"device = {name!r} but this machine has no CUDA GPU that torch can use; "
                          f"use {cpu_hint}")
    if world_size == 1:
        if (device.index or 0) >= torch.cuda.device_count():
            raise DeviceError(f"device = {name!r} but this machine has {torch.cuda.device_count()} "
                              f"GPU(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
        return device
    if device.index is not None:
        raise ConfigError(f"device = {name!r} names one GPU, but torchrun started {world_size} "
                          "processes, one per GPU: use device = 'auto' or 'cuda' (process "
                          "LOCAL_RANK takes cuda:LOCAL_RANK) and pick GPUs with CUDA_VISIBLE_DEVICES")
    if local_rank >= torch.cuda.device_count():
        raise DeviceError(f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) "
                          "are visible: --nproc_per_node must not exceed the GPUs of a node")
    return torch.device("cuda", local_rank)


def init_distributed(cfg_device: str = "auto") -> DistInfo:
    """Join the process group that torchrun describes in the environment (``RANK``,
    ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): backend NCCL on CUDA,
    gloo on the CPU, each process on its GPU ``cuda:LOCAL_RANK``.

    Without torchrun (or with one process) nothing is initialised and the result describes a
    single process on ``resolve_device(cfg_device)``. Safe to call again: an existing group
    (set up by this function or by the caller) is used as it is.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = rank_and_world()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        _create_groups()
        return DistInfo(rank, local_rank, world, resolve_device(cfg_device, local_rank, world), rank == 0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return DistInfo(0, 0, 1, resolve_device(cfg_device), True)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = resolve_device(cfg_device, local_rank, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        dist.init_process_group("gloo")
    _create_groups()
    return DistInfo(rank, local_rank, world, device, rank == 0)


def _create_groups() -> None:
    """The host group and the gather's group, made by every process as it joins, before any
    process waits for another: made at first use, the processes waiting for rank 0's download
    would make the host group without it, their wait bound by the store's timeout."""
    global _host_group, _gather_group
    if _host_group is not None or dist.get_world_size() == 1:
        return
    _host_group = dist.new_group(backend="gloo", timeout=PREPARATION_TIMEOUT)
    # DistributedDataParallel's reducer all-reduces gradient buckets on the default group
    # from autograd hooks, during the same backward pass as the gather's reduce-scatter:
    # with its own group (its own NCCL communicator) the gather never interleaves with them.
    _gather_group = dist.new_group()


def cleanup() -> None:
    """Leave the process group (if any); call once at the end of the process."""
    global _host_group, _gather_group
    _host_group = _gather_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_batch_size(global_batch: int, world_size: int) -> int:
    """Each process's share of the global batch; an error unless it divides evenly."""
    if global_batch % world_size:
        raise ConfigError(f"batch_size = {global_batch} is the global batch and must divide evenly "
                          f"among the {world_size} processes: use a multiple of {world_size} (the "
                          "learning rate is not rescaled with the number of processes)")
    return global_batch // world_size


def barrier() -> None:
    """Wait until every process gets here (no-op alone). The wait may be long (the main
    process downloading weights or writing a checkpoint): it goes through a CPU group whose
    timeout is ``PREPARATION_TIMEOUT``, not NCCL's 10 minutes."""
    if rank_and_world()[1] > 1:
        dist.barrier(group=_host_processes())


def _host_processes():
    """All processes in a gloo group, for exchanges of host values that must not wait for a GPU."""
    if _host_group is None:
        raise RuntimeError("tailclip.engine.distributed.init_distributed must be called first")
    return _host_group


def gather_group():
    """The group of ``all_gather_with_grad``: all processes, apart from the default group."""
    if _gather_group is None:
        raise RuntimeError("tailclip.engine.distributed.init_distributed must be called first")
    return _gather_group


@contextlib.contextmanager
def main_process_first():
    """Run the block in rank 0 first, then in every other node's local rank 0, then in the
    remaining processes: downloads and caches are written once (per node when nodes do not
    share a file system) and found complete by the processes that come later."""
    rank = rank_and_world()[0]
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    turn = 0 if rank == 0 else 1 if local_rank == 0 else 2
    for _ in range(turn):
        barrier()
    yield
    for _ in range(2 - turn):
        barrier()


def _collective_device() -> torch.device:
    # NCCL exchanges CUDA tensors only; gloo CPU tensors.
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def max_over_processes(value: int) -> int:
    """The largest of the processes' ``value``s, in every process; e.g. the number of a stop
    signal that only some processes received (0 elsewhere), so that all stop at one step."""
    if rank_and_world()[1] == 1:
        return value
    # Asked at every training step: through the host group, so that no GPU waits for it.
    tensor = torch.tensor([value])
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_host_processes())
    return int(tensor.item())


def any_over_processes(flags: torch.Tensor) -> torch.Tensor:
    """Element-wise OR of a bool tensor over the processes (through the host group); e.g.
    which images any process found unreadable."""
    if rank_and_world()[1] == 1:
        return flags
    values = flags.to(torch.uint8)
    dist.all_reduce(values, op=dist.ReduceOp.MAX, group=_host_processes())
    return values.bool()


def all_processes_objects(value) -> list:
    """Every process's (picklable) ``value``, by rank, in every process."""
    world = rank_and_world()[1]
    if world == 1:
        return [value]
    values = [None] * world
    dist.all_gather_object(values, value, group=_host_processes())
    return values


def main_process_outcome(action):
    """``action()`` run by the main process alone while the others wait: its result there,
    None elsewhere. A `TailCLIPError` that it raises is raised in every process, so that all
    stop with the same message."""
    if rank_and_world()[1] == 1:
        return action()
    result, error = None, [None]
    if is_main_process():
        try:
            result = action()
        except TailCLIPError as raised:
            error = [raised]
    dist.broadcast_object_list(error, src=0, group=_host_processes())
    if error[0] is not None:
        raise error[0]
    return result


def reduce_mean(total: float, count: float) -> float:
    """A mean over all processes, each holding the ``total`` of its ``count`` items (e.g. the
    sum of its images' losses): the sum of the totals over the sum of the counts. For logging."""
    totals = torch.tensor([float(total), float(count)], dtype=torch.float64)
    if rank_and_world()[1] > 1:
        totals = totals.to(_collective_device())
        dist.all_reduce(totals)
    return (totals[0] / totals[1]).item()


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Every process's ``tensor`` (same shape everywhere) concatenated along dim 0 in rank
    order. Differentiable: the backward returns to each process the sum of the gradients
    that all processes computed for its rows (a reduce-scatter). ``tensor`` with one process.
    """
    if rank_and_world()[1] == 1:
        return tensor
    # The functional collective (torch.distributed.nn.functional.all_gather is deprecated)
    # also works under torch.compile; all_gather_tensor_autograd exists from torch 2.3 on.
    return funcol.all_gather_tensor_autograd(tensor.contiguous(), 0, gather_group())


def all_gather_rows_with_grad(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """`all_gather_with_grad` of tensors whose lengths differ: process r holds
    ``counts[r]`` rows (0 included). Each is padded to the longest, so the collective's
    shapes agree, and the padding is cut away again (it gets no gradient)."""
    longest = max(counts)
    padded = torch.cat([tensor, tensor.new_zeros((longest - len(tensor), *tensor.shape[1:]))])
    parts = all_gather_with_grad(padded).split(longest)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def _all_gather_rows(tensor: torch.Tensor, counts: list[int]) -> torch.Tensor:
    """Concatenate every process's rows in rank order; process r holds ``counts[r]`` rows."""
    padded = tensor.new_zeros((max(counts), *tensor.shape[1:]))
    padded[:len(tensor)] = tensor
    parts = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([part[:count] for part, count in zip(parts, counts)])


def gather_eval(indices: torch.Tensor, *tensors: torch.Tensor) -> list[torch.Tensor]:
    """Evaluation outputs of all processes, in dataset order, each image once.

    ``indices`` [n] are the dataset indices of the rows of ``tensors`` (scores, targets,
    embeddings, ...) that this process computed. Every process gets ``[indices, *tensors]``
    with the rows of all processes sorted by dataset index, duplicates (an index scored by
    two processes, such as ``DistributedSampler``'s padding) dropped, and images that no
    process scored (unreadable ones skipped) absent, as in a single-process evaluation.
    Shards may differ in length.
    """
    device = tensors[0].device if tensors else indices.device
    indices = indices.to(device)
    world = rank_and_world()[1]
    if world > 1:
        counts = [torch.zeros(1, dtype=torch.long, device=device) for _ in range(world)]
        dist.all_gather(counts, torch.tensor([len(indices)], device=device))
        counts = [int(count) for count in counts]
        indices, *tensors = [_all_gather_rows(t.to(device), counts) for t in (indices, *tensors)]
    order = torch.argsort(indices, stable=True)
    sorted_indices = indices[order]
    first = torch.ones_like(sorted_indices, dtype=torch.bool)
    first[1:] = sorted_indices[1:] != sorted_indices[:-1]
    keep = order[first]
    return [indices[keep], *(t[keep] for t in tensors)]


def eval_shard(num_items: int, batch_size: int) -> list[int]:
    """The dataset indices this process evaluates, in order: of the single-process batches
    (``batch_size`` consecutive indices), process r of N takes batches r, r + N, r + 2N, ...;
    alone, every index. Cut into batches of ``batch_size``, a shard is made of whole
    single-process batches, so every batch-level quantity (the contrastive loss) is the same."""
    rank, world = rank_and_world()
    starts = range(rank * batch_size, num_items, world * batch_size)
    return [i for start in starts for i in range(start, min(start + batch_size, num_items))]


class GlobalBatchObjective(nn.Module):
    """A TailCLIP objective computed on the global batch, for training steps.

    The inputs of all processes (caption and image embeddings, class logits, targets) are
    gathered with ``all_gather_with_grad`` before ``objective`` is applied, so that every
    process returns the single-process loss (see the module docstring for the gradients).
    The output adds ``global_logits`` (detached) and ``global_targets``, the gathered batch,
    for training metrics. Evaluation applies the objective itself to each process's batches.

    ``uneven_batches``: the processes' batches may differ in length (unreadable images left
    out, down to none in a process), which costs an exchange of the lengths every step.
    """

    def __init__(self, objective: nn.Module, uneven_batches: bool = False):
        super().__init__()
        self.objective = objective
        self.uneven_batches = uneven_batches

    def _gather(self, tensors: tuple) -> list[torch.Tensor]:
        if not self.uneven_batches:
            return [all_gather_with_grad(t) for t in tensors]
        counts = all_processes_objects(len(tensors[0]))
        return [all_gather_rows_with_grad(t, counts) for t in tensors]

    @property
    def uses_captions(self) -> bool:
        return self.objective.uses_captions

    def forward(self, image_emb, caption_emb, logit_scale, logits, targets, logit_bias=None):
        if caption_emb is not None:  # image embeddings only enter the contrastive term
            image_emb, caption_emb = self._gather((image_emb, caption_emb))
        logits, targets = self._gather((logits, targets))
        out = self.objective(image_emb, caption_emb, logit_scale, logits, targets, logit_bias)
        return {**out, "global_logits": logits.detach(), "global_targets": targets}


def global_batch_objective(objective: nn.Module, uneven_batches: bool = False) -> nn.Module:
    """The objective of training steps: ``objective`` itself with one process, else its
    `GlobalBatchObjective` (``uneven_batches``: see there)."""
    if rank_and_world()[1] == 1:
        return objective
    return GlobalBatchObjective(objective, uneven_batches)


def distribute_model(model: nn.Module, device: torch.device, find_unused_parameters: bool = False) -> nn.Module:
    """The module to call for training steps: ``model`` itself with one process, else
    ``model`` wrapped in ``DistributedDataParallel``.

    The loss is computed outside the wrapped call, by `global_batch_objective` from the
    model's outputs: DistributedDataParallel averages the gradients of whatever its call
    returns, each parameter once the backward pass has reached it. With several processes
    and on CUDA ``model``'s batch norms (ResNet backbones) become ``SyncBatchNorm`` in place,
    so that batch statistics too are those of the global batch. Keep using ``model`` itself
    for evaluation and checkpoints (its state dict is unchanged).
    """
    if rank_and_world()[1] == 1:
        return model
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        if device.type == "cuda":
            nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif is_main_process():
            warnings.warn("batch norm statistics are per process on the CPU (SyncBatchNorm "
                          "needs CUDA): training differs slightly from a single process",
                          stacklevel=2)
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   find_unused_parameters=find_unused_parameters)
