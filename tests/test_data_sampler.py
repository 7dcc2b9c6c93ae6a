"""Balanced sampler: repeatable, distributed as the weights, and sliced correctly across ranks."""
import pytest
import torch
from scipy.stats import chisquare
from torch.utils.data import WeightedRandomSampler

from tailclip.data import BalancedSampler
from tailclip.data.sampler import epoch_generator

WEIGHTS = [0.1, 1.0, 0.5, 0.0, 0.25, 0.8]


def draw(weights=WEIGHTS, num_samples=50, seed=0, epoch=0, **kwargs):
    sampler = BalancedSampler(weights, num_samples, seed, kwargs.pop("global_batch_size", 10), **kwargs)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_same_seed_and_epoch_give_same_indices():
    assert draw() == draw()
    assert draw(epoch=1) == draw(epoch=1)
    assert draw(epoch=1) != draw(epoch=0)
    assert draw(seed=1) != draw(seed=0)
    assert draw(seed=1, epoch=0) != draw(seed=0, epoch=1)  # seed and epoch are not simply added


def test_same_draw_as_weighted_random_sampler():
    reference = WeightedRandomSampler(WEIGHTS, 50, replacement=True, generator=epoch_generator(3, 7))
    assert draw(seed=3, epoch=7) == list(reference)


def test_frequencies_follow_the_weights():
    num_samples = 200_000
    indices = torch.tensor(draw(num_samples=num_samples, seed=5))
    counts = torch.bincount(indices, minlength=len(WEIGHTS)).double()
    assert counts[3] == 0  # weight 0 is never drawn
    weights = torch.tensor(WEIGHTS, dtype=torch.float64)
    expected = weights / weights.sum() * num_samples
    drawn = weights > 0
    _, p_value = chisquare(counts[drawn].numpy(), expected[drawn].numpy())
    assert p_value > 1e-3
    assert torch.allclose(counts / num_samples, weights / weights.sum(), atol=0.005)


def test_plain_shuffle_is_a_permutation():
    indices = draw(weights=None, num_samples=23)
    assert sorted(indices) == list(range(23)) and indices != list(range(23))
    assert indices == draw(weights=None, num_samples=23)


@pytest.mark.parametrize("num_samples", [40, 37, 33])
def test_rank_slices_form_the_single_process_batches(num_samples):
    world, global_batch = 4, 8
    single = draw(num_samples=num_samples, global_batch_size=global_batch)
    per_rank = [draw(num_samples=num_samples, global_batch_size=global_batch, rank=rank, world_size=world)
                for rank in range(world)]
    local = global_batch // world
    last = (num_samples % global_batch) // world  # the cut final batch, per rank
    assert all(len(indices) == (num_samples // global_batch) * local + last for indices in per_rank)
    for step in range(num_samples // global_batch):
        union = sum((indices[step * local:(step + 1) * local] for indices in per_rank), [])
        assert union == single[step * global_batch:(step + 1) * global_batch]
    tail = sum((indices[len(indices) - last:] if last else [] for indices in per_rank), [])
    start = num_samples // global_batch * global_batch
    assert tail == single[start:start + last * world]
    assert len(BalancedSampler(WEIGHTS, num_samples, 0, global_batch, rank=1, world_size=world)) == len(per_rank[1])


def test_single_process_keeps_every_sample():
    assert len(draw(num_samples=37)) == 37
    assert len(BalancedSampler(None, 37, 0, 8)) == 37


@pytest.mark.parametrize("weights, kwargs, message", [
    (WEIGHTS, dict(global_batch_size=10, world_size=4), "multiple of the number of processes"),
    (WEIGHTS, dict(rank=2, world_size=2), "rank 2 is not in"),
    ([1.0, -1.0], {}, "non-negative"),
    ([0.0, 0.0], {}, "positive sum"),
    ([1.0, float("nan")], {}, "finite"),
])
def test_bad_arguments(weights, kwargs, message):
    with pytest.raises(ValueError, match=message):
        draw(weights=weights, **kwargs)
