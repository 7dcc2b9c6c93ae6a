"""Epoch-seeded balanced sampling that gives every DDP rank its slice of one global sequence."""
import numpy as np
import torch
from torch.utils.data import Sampler


def mixed_seed(*keys: int) -> int:
    """A well-mixed 64-bit seed from integers (no clashes such as seed + epoch)."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0])


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A generator whose state depends only on (seed, epoch)."""
    return torch.Generator().manual_seed(mixed_seed(seed, epoch))


class BalancedSampler(Sampler[int]):
    """Each epoch, ``num_samples`` indices drawn with replacement with probability proportional to
    ``weights`` (the draw of ``torch.utils.data.WeightedRandomSampler``); ``weights=None`` gives a
    plain shuffle, a permutation of ``range(num_samples)``.

    All ranks draw the same global sequence from (seed, epoch). Step s uses the global batch
    ``seq[s*B:(s+1)*B]`` (B = ``global_batch_size``) and rank r yields its contiguous slice of
    B / world_size indices, so the union of a step's per-rank batches is the single-process batch.
    A final incomplete global batch of R indices is cut to the largest multiple of world_size,
    R // world_size per rank, so that every rank runs the same number of steps (with one process
    nothing is dropped). Use one ``DataLoader`` batch of B / world_size per rank.
    """

    def __init__(self, weights, num_samples: int, seed: int, global_batch_size: int,
                 rank: int = 0, world_size: int = 1):
        if global_batch_size <= 0 or global_batch_size % world_size:
            raise ValueError(f"global batch size {global_batch_size} must be a positive multiple "
                             f"of the number of processes ({world_size})")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        if num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.double)
            if weights.ndim != 1 or not torch.isfinite(weights).all() or (weights < 0).any() \
                    or weights.sum() <= 0:
                raise ValueError("weights must be a 1-d sequence of finite, non-negative numbers "
                                 "with a positive sum")
        self.weights = weights
        self.num_samples = num_samples
        self.seed = seed
        self.global_batch_size = global_batch_size
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def global_indices(self) -> torch.Tensor:
        """The epoch's full sequence of ``num_samples`` indices, identical on every rank."""
        generator = epoch_generator(self.seed, self.epoch)
        if self.weights is None:
            return torch.randperm(self.num_samples, generator=generator)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator)

    def _split(self) -> tuple[int, int]:
        """(number of full global batches, per-rank size of the cut final batch)."""
        full_batches, rest = divmod(self.num_samples, self.global_batch_size)
        return full_batches, rest // self.world_size

    def __iter__(self):
        sequence = self.global_indices()
        full_batches, last_per_rank = self._split()
        per_rank = self.global_batch_size // self.world_size
        cut = full_batches * self.global_batch_size
        full = sequence[:cut].view(full_batches, self.world_size, per_rank)[:, self.rank]
        last = sequence[cut:cut + last_per_rank * self.world_size].view(self.world_size, last_per_rank)
        return iter(torch.cat([full.flatten(), last[self.rank]]).tolist())

    def __len__(self) -> int:
        full_batches, last_per_rank = self._split()
        return full_batches * (self.global_batch_size // self.world_size) + last_per_rank
