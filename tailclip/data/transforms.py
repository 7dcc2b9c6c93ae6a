"""Image transforms of the paper: square resize (aspect not kept), flip in training, normalise."""
from torchvision import transforms

MEANS_STDS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


def resize(size: int) -> transforms.Resize:
    """The resize applied to every image (also what a decoded-image cache must reproduce)."""
    return transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BILINEAR,
                             antialias=True)


def normalization(normalize: str) -> transforms.Normalize:
    """Normalisation with the named statistics, ``"imagenet"`` or ``"clip"``."""
    if normalize not in MEANS_STDS:
        raise ValueError(f"unknown normalize {normalize!r}; expected one of {sorted(MEANS_STDS)}")
    mean, std = MEANS_STDS[normalize]
    return transforms.Normalize(mean, std)


def build_transform(size: int, train: bool, normalize: str) -> transforms.Compose:
    """PIL RGB image -> normalised float tensor [3, size, size]; random flip only when training."""
    flip = [transforms.RandomHorizontalFlip()] if train else []
    return transforms.Compose([resize(size), *flip, transforms.ToTensor(), normalization(normalize)])
