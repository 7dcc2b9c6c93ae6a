"""Models and batches of the GPU suite: real-size random CLIP weights, VOC's 20 classes."""
import torch

import clip
from tailclip import factory
from tailclip.config import Config

CUDA = torch.device("cuda")
VOC_CLASSES = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
               "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
               "train", "tvmonitor"]


def model_config(model_name: str, **options) -> Config:
    return Config(**{"model_name": model_name, "pretrained": False, "size": 224, "device": "cuda", "lr": 1e-5,
                     **options})


def build_model(model_name: str, seed: int = 0, **options):
    """A TailCLIP on real-size random CLIP weights (no download), on the GPU, in training mode,
    and its objective."""
    cfg = model_config(model_name, **options)
    torch.manual_seed(seed)
    prompts = [cfg.class_caption + name for name in VOC_CLASSES]
    weights = torch.linspace(0.5, 2.0, len(VOC_CLASSES))
    model = factory.build_model(cfg, prompts).to(CUDA).train()
    return model, factory.build_objective(cfg, model, weights).to(CUDA)


def training_outputs(model, objective, images, targets, tokens) -> dict:
    """A training step's forward (``training.train_step``): the model's outputs and the loss terms."""
    outputs = model(images, tokens)
    return {**outputs, **objective(**outputs, targets=targets)}


def batch(count: int = 8, seed: int = 0, longest_caption: int | None = None):
    """(images, targets, caption ids) on the GPU: random 224-pixel images, 1-3 labels each,
    captions made from the labels (cut after the last end-of-text token), or captions of
    ``longest_caption`` tokens at most."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(count, 3, 224, 224, generator=generator)
    targets = torch.zeros(count, len(VOC_CLASSES))
    captions = []
    for row in range(count):
        labels = torch.randperm(len(VOC_CLASSES), generator=generator)[:1 + row % 3].tolist()
        targets[row, labels] = 1
        captions.append("a photo of a " + ", ".join(VOC_CLASSES[i] for i in labels))
    ids = clip.tokenize(captions)
    if longest_caption is not None:  # the row's words repeated to the length wanted
        lengths = torch.linspace(4, longest_caption, count).round().long()
        for row, length in enumerate(lengths.tolist()):
            words = ids[row, 1:ids[row].argmax()].repeat(length)[:length - 2]
            ids[row] = 0
            ids[row, 0], ids[row, 1:length - 1], ids[row, length - 1] = 49406, words, 49407
    return images.to(CUDA), targets.to(CUDA), clip.trim_padding(ids).to(CUDA)
