"""Image transforms of the paper: square resize (aspect not kept), flip in training, normalise.

Written on PIL and torch, the same operations as torchvision's ``Resize((size, size),
BILINEAR, antialias=True)``, ``RandomHorizontalFlip``, ``ToTensor`` and ``Normalize`` (equal to
the bit, and drawing the flip from the same random numbers): importing torchvision loads its
detection models and torch._dynamo, seconds of start-up that a run does not use.
"""
import numpy as np
import torch
from PIL import Image

MEANS_STDS = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
}


class Resize:
    """The resize applied to every image (also what a decoded-image cache must reproduce):
    PIL's bilinear filter, which antialiases when it shrinks."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.resize((self.size, self.size), Image.Resampling.BILINEAR)


class Transform:
    """PIL RGB image -> normalised float tensor [3, size, size]; random flip only when training."""

    def __init__(self, size: int, train: bool, normalize: str):
        if normalize not in MEANS_STDS:
            raise ValueError(f"unknown normalize {normalize!r}; expected one of {sorted(MEANS_STDS)}")
        self.resize, self.train = Resize(size), train
        mean, std = MEANS_STDS[normalize]
        self.mean, self.std = torch.tensor(mean).view(-1, 1, 1), torch.tensor(std).view(-1, 1, 1)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = self.resize(image)
        if self.train and torch.rand(1) < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        pixels = torch.from_numpy(np.array(image, np.uint8, copy=True)).view(image.height, image.width, -1)
        return (pixels.permute(2, 0, 1).float() / 255 - self.mean) / self.std


def build_transform(size: int, train: bool, normalize: str) -> Transform:
    return Transform(size, train, normalize)
