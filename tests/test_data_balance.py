"""Class groups and balancing weights against hand-computed values."""
import json

import pytest
import torch

from tailclip.data import balance_weights, class_counts, class_groups, read_split

# N = 5 images; class 0 is in 3 images, class 1 in 1, class 2 in 2; image 4 has no label.
LABEL_SETS = [(0,), (0, 1), (2,), (0, 2), ()]
# Ratios N / n_c = 5/3, 5, 5/2. Label sums per image: 5/3, 5/3 + 5 = 20/3, 5/2, 5/3 + 5/2 = 25/6, 0.


def weights(class_power, sample_power, label_sets=LABEL_SETS):
    with pytest.warns(UserWarning, match="1 training images have no label"):
        return balance_weights(label_sets, 3, class_power, sample_power)


def test_hand_computed_power_one():
    class_weights, sample_weights = weights(1.0, 1.0)
    # (5/3, 5, 5/2) / 5 and (5/3, 20/3, 5/2, 25/6, 0) / (20/3)
    assert class_weights.tolist() == pytest.approx([1 / 3, 1.0, 1 / 2], abs=1e-15)
    assert sample_weights.tolist() == pytest.approx([0.25, 1.0, 0.375, 0.625, 0.0], abs=1e-15)
    assert class_weights.dtype == sample_weights.dtype == torch.float64


def test_hand_computed_other_powers():
    class_weights, sample_weights = weights(2.0, 0.5)
    assert class_weights.tolist() == pytest.approx([1 / 9, 1.0, 1 / 4], abs=1e-15)
    # sqrt of the sums over sqrt(20/3): sqrt(1/4), 1, sqrt(3/8), sqrt(5/8), 0
    assert sample_weights.tolist() == pytest.approx([0.5, 1.0, 0.375 ** 0.5, 0.625 ** 0.5, 0.0], abs=1e-15)


def test_power_applies_after_the_sum():
    _, sample_weights = weights(1.0, 2.0)
    ratios = torch.tensor([5 / 3, 5, 5 / 2], dtype=torch.float64)
    sums = torch.stack([ratios[list(labels)].sum() for labels in LABEL_SETS])
    assert torch.allclose(sample_weights, sums ** 2 / (sums ** 2).max(), rtol=0, atol=1e-15)
    # Powering each ratio before summing would be a different weighting: image 3 shows it.
    powered_first = torch.stack([(ratios[list(labels)] ** 2).sum() for labels in LABEL_SETS])
    assert not torch.isclose(sample_weights[3], powered_first[3] / powered_first.max())
    assert sample_weights[3].item() == pytest.approx((25 / 6) ** 2 / (20 / 3) ** 2, abs=1e-15)


def test_max_normalised_and_power_zero():
    class_weights, sample_weights = weights(0.0, 0.0)
    assert class_weights.tolist() == [1.0, 1.0, 1.0]
    assert sample_weights.tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]  # unlabelled stays 0, not 0 ** 0
    class_weights, sample_weights = weights(1.3, 0.7)
    assert class_weights.max() == 1.0 and sample_weights.max() == 1.0


def test_class_without_training_image_is_an_error():
    with pytest.raises(ValueError, match=r"classes with no training image: \[1, 3\]"):
        class_groups([(0,), (2, 0)], 4)
    with pytest.raises(ValueError, match=r"no training image: \[1\]"):
        balance_weights([(0,), (2,)], 3, 1.0, 1.0)


def test_group_thresholds():
    # Single-label images: class 0 in 100, class 1 in 99, class 2 in 20, class 3 in 19, class 4 in 1.
    label_sets = [(c,) for c, n in enumerate([100, 99, 20, 19, 1]) for _ in range(n)]
    assert class_counts(label_sets, 5).tolist() == [100, 99, 20, 19, 1]
    assert class_groups(label_sets, 5) == {"head": [0], "medium": [1, 2], "tail": [3, 4]}


def test_voc_mlt_class_weights(shared_data):
    folder = shared_data / "voc_mlt"
    frequencies = json.loads((folder / "class_split.json").read_text())["train_class_freq"]
    label_sets = [entry.labels for entry in read_split(folder / "voc_lt_train.txt", 20)]
    class_weights, sample_weights = balance_weights(label_sets, 20, 1.0, 1.0)
    # (N / n_c) / (N / min n) = min n / n_c, with min n = 4 (class 9, "cow").
    assert class_weights.tolist() == pytest.approx([4 / n for n in frequencies], rel=1e-12)
    assert sample_weights.shape == (1142,) and sample_weights.max() == 1.0 and sample_weights.min() > 0
