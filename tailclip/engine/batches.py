"""A split's batches on the device, from the decoded-image cache or the JPEG DataLoader.

Training batches follow ``BalancedSampler``'s sequence for (seed, epoch), this process's
slice of each global batch; test batches go through the split in order (with several
processes: this process's share of those batches, ``tailclip.engine.distributed.eval_shard``). A run resumed in
the middle of an epoch skips the steps already taken and sees the batches an unbroken run
would have seen: the order depends on (seed, epoch) only, cached-path flips on (seed,
epoch, step), and JPEG-path flips on torch's generator, whose state the checkpoint restores
(in DataLoader workers, which a resume starts afresh: seeded per sample by (seed, epoch,
rank, place in the epoch), `SeededSamples`).

With ``skip_unreadable_images`` a batch leaves out the images that cannot be read. A
training step whose global batch has no readable image is skipped (None in place of the
batch) and still counts as a step, so that a resume starts after it; under torchrun a
process whose own slice is unreadable trains on an empty batch while the others train on
theirs, so that every process takes every step.
"""
import math
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from clip import trim_padding
from tailclip.config import Config
from tailclip.data import MEANS_STDS, BalancedSampler, collate_skip_none
from tailclip.data.sampler import mixed_seed
from tailclip.engine.cache import CachedImages, CachedMultiLabelDataset, to_model_input
from tailclip.engine.distributed import (
    eval_shard,
    is_main_process,
    local_batch_size,
    main_process_first,
    max_over_processes,
    rank_and_world,
)
from tailclip.engine.logger import say
from tailclip.engine.progress import show_progress
from tailclip.text_tokens import text_tokenizer
from tailclip.wording import count


class ResumableSampler(Sampler):
    """Yields a sampler's indices after the first ``skip`` (those of steps already taken
    before an interruption); the epoch's sequence itself depends on (seed, epoch) only."""

    def __init__(self, sampler: BalancedSampler):
        self.sampler = sampler
        self.skip = 0

    def __iter__(self):
        return iter(list(self.sampler)[self.skip:])

    def __len__(self) -> int:
        return len(self.sampler) - self.skip


class SeededSamples(Dataset):
    """``dataset``'s items by ``(sample_seed, index)``, each drawn with torch's generator
    seeded by ``sample_seed`` first: the random transforms (flips) of an item depend on its
    seed alone, not on which DataLoader worker reads it or what that worker read before."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, seeded):
        sample_seed, index = seeded
        torch.manual_seed(sample_seed)
        return self.dataset[index]


class SeededSampler(Sampler):
    """A `ResumableSampler`'s indices as `SeededSamples` keys: the k-th sample of this
    process in epoch e gets the seed (seed, e, rank, k), wherever the epoch was resumed."""

    def __init__(self, sampler: ResumableSampler, seed: int, rank: int):
        self.sampler, self.seed, self.rank = sampler, seed, rank

    def __iter__(self):
        epoch = self.sampler.sampler.epoch
        return ((seed_of(self.seed, epoch, self.rank, position, 3), index)
                for position, index in enumerate(self.sampler, start=self.sampler.skip))

    def __len__(self) -> int:
        return len(self.sampler)


# Under torch.compile every caption length is another input shape, so another graph to trace
# and compile: with `compile = True` training caption ids are cut at the first of these lengths
# that holds the batch's longest caption (the text tower masks what follows the end-of-text
# token, so the embeddings are the same), and a run compiles at most one graph per length.
COMPILED_CAPTION_LENGTHS = (16, 32, 77)


def caption_length(tokens: torch.Tensor, fixed_lengths: tuple[int, ...] = (), trim=trim_padding) -> int:
    """Where to cut the caption ids [N, L]: where ``trim`` (the tokenizer's ``trim_padding``)
    cuts them, or at the first of ``fixed_lengths`` at least that long (at most L)."""
    length = trim(tokens).shape[1]
    return min(min((fixed for fixed in fixed_lengths if fixed >= length), default=length), tokens.shape[1])


def seed_of(*keys: int) -> int:
    """`mixed_seed` in 63 bits, as the batches' flips and order have always been seeded."""
    return mixed_seed(*keys) >> 1


class SplitBatches:
    """A split's batches as device tensors ``(images, targets, caption_tokens, indices)``.

    Cached (``image_cache``): the loader reads uint8 batches of the decoded-image cache, and
    flip + normalisation run on the device; the flips of training step s of epoch e come
    from a generator seeded by (seed, e, s), so they do not depend on where a run resumed.
    Uncached: the DataLoader decodes and transforms each JPEG, flips included.

    ``caption_lengths``: the fixed lengths caption ids are cut at (``caption_length``); none:
    the batch's own.

    ``skip_unreadable``: the loader gives None for a batch whose images were all unreadable
    (``collate_skip_none``); an empty batch of ``image_size`` images stands in for it in a
    process whose slice alone is unreadable.
    """

    def __init__(self, loader: DataLoader, sampler: ResumableSampler | None, batch_size: int,
                 cached: bool, normalize: str, train: bool, seed: int, trim_padding=trim_padding,
                 skip_unreadable: bool = False, image_size: int | None = None,
                 caption_lengths: tuple[int, ...] = ()):
        self.loader = loader
        self.sampler = sampler
        self.batch_size = batch_size
        self.cached = cached
        self.mean, self.std = MEANS_STDS[normalize]
        self.train = train
        self.seed = seed
        self.trim_padding = trim_padding  # the backbone tokenizer's (`tailclip.text_tokens`)
        self.skip_unreadable = skip_unreadable
        self.image_size = image_size
        self.caption_lengths = caption_lengths

    def steps_per_epoch(self) -> int:
        """Batches in a whole epoch (before any skip)."""
        if self.sampler is None:
            return len(self.loader)
        return math.ceil(len(self.sampler.sampler) / self.batch_size)

    def batches(self, device: torch.device, epoch: int = 0, start_step: int = 0):
        """Iterate over the epoch's batches from step ``start_step`` on: one per training step
        (None for a step without a readable image); test batches without a readable image
        are left out."""
        if self.sampler is not None:
            self.sampler.sampler.set_epoch(epoch)
            self.sampler.skip = start_step * self.batch_size
        # Worker processes (re)started for this epoch are seeded from (seed, epoch).
        self.loader.generator.manual_seed(seed_of(self.seed, epoch, 1))
        for step, batch in enumerate(self.loader, start=start_step):
            if self.train:
                batch = self._agreed(batch)
                yield None if batch is None else self._on_device(batch, device, epoch, step)
            elif batch is not None:
                yield self._on_device(batch, device, epoch, step)

    def _agreed(self, batch):
        """This process's part of a training step: None where the global batch has no
        readable image, an empty batch where only this process's slice has none."""
        if not self.skip_unreadable or rank_and_world()[1] == 1:
            return batch
        if max_over_processes(0 if batch is None else len(batch[1])) == 0:
            return None
        if batch is not None:
            return batch
        dataset = self.loader.dataset
        return (torch.empty(0, 3, self.image_size, self.image_size), dataset.targets[:0],
                dataset.caption_tokens[:0], torch.empty(0, dtype=torch.long))

    def _on_device(self, batch, device: torch.device, epoch: int, step: int) -> tuple:
        images, targets, tokens, index = batch
        images = images.to(device, non_blocking=True)
        if self.cached:
            flips = torch.Generator().manual_seed(seed_of(self.seed, epoch, step, 2))
            # This process's images are slice `rank` of the global batch: skipping the
            # draws of the slices before it gives each image its single-process flip.
            torch.rand(rank_and_world()[0] * len(images), generator=flips)
            images = to_model_input(images, self.mean, self.std, flip=self.train, generator=flips)
        # The length is read on the CPU and the whole (pinned) ids are copied: the device
        # never waits for the length, nor for a copy from pageable memory.
        length = caption_length(tokens, self.caption_lengths, self.trim_padding)
        return (images, targets.to(device, non_blocking=True),
                tokens.to(device, non_blocking=True)[:, :length], index)


def cache_folder(data) -> Path:
    # Beside the split files, so that each dataset keeps its own cache.
    return data.files.train_list.parent / "cache"


def build_split_batches(cfg: Config, data, train: bool, device: torch.device) -> SplitBatches:
    """The training (balanced or shuffled, per-rank slice) or test (in order) batches."""
    dataset = data.train if train else data.test
    rank, world = rank_and_world()
    sampler = None
    if train:
        if cfg.batch_size > len(dataset):
            say(f"warning: batch_size = {cfg.batch_size} is more than the "
                f"{count(len(dataset), 'training image')}: each epoch is one step of {len(dataset)} "
                "images (a smaller batch_size gives more steps)")
        batch_size = local_batch_size(cfg.batch_size, world)
        weights = data.sample_weights if cfg.use_sample_weights else None
        sampler = ResumableSampler(BalancedSampler(weights, len(dataset), cfg.seed, cfg.batch_size,
                                                   rank=rank, world_size=world))
    else:
        batch_size = cfg.eval_batch_size
    order = sampler if train else eval_shard(len(dataset), batch_size)
    cached = cfg.image_cache and not cfg.skip_unreadable_images
    if cfg.image_cache and cfg.skip_unreadable_images:
        say("image_cache is not used with skip_unreadable_images = True (images are decoded one by one)")
    common = dict(pin_memory=device.type == "cuda", generator=torch.Generator())
    if cached:
        with main_process_first():  # one process builds the cache, the others open it
            images = CachedImages([dataset.image_path(i) for i in range(len(dataset))], cfg.size,
                                  cache_folder(data), "train" if train else "test",
                                  progress=is_main_process() and show_progress())
        # Read in this process whatever num_workers says: a batch is one slice of the memory
        # map, far cheaper to copy here than to hand over from a worker process (BENCHMARKS.md).
        loader = DataLoader(CachedMultiLabelDataset(images, dataset.targets, dataset.caption_tokens),
                            sampler=BatchSampler(order, batch_size, drop_last=False),
                            batch_size=None, num_workers=0, **common)
    else:
        # In this process the flips come from torch's generator, which a checkpoint restores;
        # worker processes start afresh after a resume, so there each sample's flip is seeded
        # by its place in the epoch instead, and a resumed run flips as an unbroken one.
        if train and cfg.num_workers > 0:
            dataset, order = SeededSamples(dataset), SeededSampler(order, cfg.seed, rank)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=order,
                            collate_fn=collate_skip_none, num_workers=cfg.num_workers,
                            persistent_workers=cfg.num_workers > 0 and not train, **common)
    return SplitBatches(loader, sampler, batch_size, cached, cfg.normalize, train, cfg.seed,
                        trim_padding=text_tokenizer(cfg).trim_padding,
                        skip_unreadable=cfg.skip_unreadable_images, image_size=cfg.size,
                        caption_lengths=COMPILED_CAPTION_LENGTHS if cfg.compile and train else ())
