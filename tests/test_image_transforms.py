"""Our image transforms against torchvision's, which they replace to keep torchvision (and the
torch._dynamo it imports) out of a run's start-up: equal to the bit, flips drawn alike."""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

from tailclip.data.transforms import MEANS_STDS, Resize, build_transform


def torchvision_transform(size: int, train: bool, normalize: str) -> transforms.Compose:
    """The transform as it was written with torchvision."""
    flip = [transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose([
        transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True),
        *flip, transforms.ToTensor(), transforms.Normalize(*MEANS_STDS[normalize])])


def images():
    rng = np.random.default_rng(0)
    # Shrunk, enlarged, kept; square and not.
    for height, width in ((37, 53), (120, 80), (32, 32), (8, 20)):
        yield Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.mark.parametrize("normalize", sorted(MEANS_STDS))
def test_evaluation_transform_equals_torchvision(normalize):
    for image in images():
        ours, theirs = build_transform(32, False, normalize)(image), torchvision_transform(32, False, normalize)(image)
        assert ours.dtype == theirs.dtype == torch.float32 and ours.shape == (3, 32, 32)
        assert torch.equal(ours, theirs)


def test_training_flips_the_same_images_from_the_same_random_numbers():
    image = next(images())
    torch.manual_seed(1)
    ours = [build_transform(24, True, "clip")(image) for _ in range(12)]
    after_ours = torch.rand(1)
    torch.manual_seed(1)
    theirs = [torchvision_transform(24, True, "clip")(image) for _ in range(12)]
    assert torch.equal(torch.rand(1), after_ours)  # the same random numbers drawn
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    flipped = [not torch.equal(a, ours[0]) for a in ours]
    assert any(flipped) and not all(flipped)


def test_resize_equals_torchvision():
    for image in images():
        theirs = transforms.Resize((16, 16), interpolation=transforms.InterpolationMode.BILINEAR, antialias=True)
        assert np.array_equal(np.asarray(Resize(16)(image)), np.asarray(theirs(image)))
