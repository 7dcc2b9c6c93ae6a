"""The image preprocessing CLIP was trained with."""
from collections.abc import Callable

import torch
from PIL import Image

# Per-channel statistics of OpenAI's CLIP training images.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _to_rgb(image: Image.Image) -> Image.Image:
    return image.convert("RGB")


def clip_transform(resolution: int) -> Callable[[Image.Image], torch.Tensor]:
    """PIL image -> normalised tensor [3, resolution, resolution]: bicubic resize of the short
    side, center crop, CLIP mean/std (a torchvision ``Compose``)."""
    # Imported here: torchvision's package import loads its detection models and torch._dynamo
    # (seconds), which only this preprocessing needs.
    from torchvision import transforms

    return transforms.Compose([
        transforms.Resize(resolution, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(resolution),
        transforms.Lambda(_to_rgb),
        transforms.ToTensor(),
        transforms.Normalize(CLIP_MEAN, CLIP_STD),
    ])
