"""Class groups and re-balancing weights, from the training images' label sets.

With N training images and n_c the number of training images that contain class c:
- groups: head n_c >= 100, medium 20 <= n_c < 100, tail n_c < 20 (this reproduces the
  published VOC-MLT and COCO-MLT splits exactly);
- class weight c = (N / n_c) ** class_power, divided by the largest;
- sample weight i = (sum over the classes c of image i of N / n_c) ** sample_power, divided by
  the largest. The power applies to the sum, not to each ratio, as in the paper's code.
"""
import warnings

import torch

GROUPS = ("head", "medium", "tail")  # the class groups, most images first
HEAD_MIN_IMAGES = 100
TAIL_MAX_IMAGES = 19


def class_counts(label_sets, num_classes: int) -> torch.Tensor:
    """Number of images containing each class (int64 [C]); a class with none is an error."""
    counts = torch.zeros(num_classes, dtype=torch.int64)
    for labels in label_sets:
        counts[list(labels)] += 1  # labels are a set: no class counted twice per image
    empty = torch.nonzero(counts == 0).flatten().tolist()
    if empty:
        raise ValueError(f"classes with no training image: {empty} (of {num_classes} classes); "
                         "every class needs at least one training image for groups and weights")
    return counts


def class_groups(label_sets, num_classes: int) -> dict[str, list[int]]:
    """Split classes into head / medium / tail by their training-image counts (sorted indices)."""
    counts = class_counts(label_sets, num_classes).tolist()
    head, medium, tail = GROUPS
    return {
        head: [c for c, n in enumerate(counts) if n >= HEAD_MIN_IMAGES],
        medium: [c for c, n in enumerate(counts) if TAIL_MAX_IMAGES < n < HEAD_MIN_IMAGES],
        tail: [c for c, n in enumerate(counts) if n <= TAIL_MAX_IMAGES],
    }


def balance_weights(label_sets, num_classes: int, class_power: float,
                    sample_power: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (class_weights float64 [C], sample_weights float64 [N]), each max-normalised.

    Images without any label get sample weight 0 (they can never be drawn) and a warning.
    """
    counts = class_counts(label_sets, num_classes).double()
    ratios = len(label_sets) / counts
    class_weights = ratios ** class_power
    class_weights = class_weights / class_weights.max()

    label_sums = torch.stack([ratios[list(labels)].sum() for labels in label_sets])
    unlabelled = torch.tensor([len(labels) == 0 for labels in label_sets])
    # where() rather than relying on 0 ** power, which is 1 for power 0 and inf for power < 0.
    sample_weights = torch.where(unlabelled, 0.0, label_sums ** sample_power)
    sample_weights = sample_weights / sample_weights.max()
    if unlabelled.any():
        warnings.warn(f"{int(unlabelled.sum())} training images have no label; "
                      "they get sample weight 0 and are never drawn", stacklevel=2)
    return class_weights, sample_weights
