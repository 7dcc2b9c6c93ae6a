"""A tiny custom dataset and its config, so that tests can run train.py in seconds.

Four classes, 16 training and 8 test images (64-pixel noise JPEGs), in the benchmark's file
format: ``train.txt`` / ``test.txt`` lines ``images/<split>/NN.jpg <label> ...``,
``classes.txt`` lines ``<name> <index>``, image paths relative to the dataset folder.
"""
from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ["cat", "dog", "red car", "tree"]
# Every class in both splits; a few images with two labels.
TRAIN_LABELS = [[i % 4] + ([(i + 1) % 4] if i % 3 == 0 else []) for i in range(16)]
TEST_LABELS = [[i % 4] + ([(i + 2) % 4] if i % 2 == 0 else []) for i in range(8)]
# A tiny random CLIP on the CPU, one epoch, the main process only.
TINY_OPTIONS = {"model_name": "ViT-tiny", "pretrained": False, "size": 64, "device": "cpu",
                "precision": "fp32", "num_workers": 0, "epochs": 1, "batch_size": 8,
                "eval_batch_size": 8, "lr": 1e-3}


def split_lines(split: str, label_sets) -> list[str]:
    return [" ".join([f"images/{split}/{index:02d}.jpg", *map(str, labels)])
            for index, labels in enumerate(label_sets)]


def write_lines(path: Path, lines) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def write_dataset(root: Path, seed: int = 0) -> Path:
    """Write the dataset into ``root`` (created) and return it."""
    rng = np.random.default_rng(seed)
    for split, label_sets in (("train", TRAIN_LABELS), ("test", TEST_LABELS)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        lines = split_lines(split, label_sets)
        for line in lines:
            pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / line.split()[0], quality=90)
        write_lines(root / f"{split}.txt", lines)
    write_lines(root / "classes.txt", [f"{name} {index}" for index, name in enumerate(CLASS_NAMES)])
    return root


def write_config(path: Path, root: Path, run_dir: Path, **options) -> Path:
    """A config file for the dataset in ``root``: `TINY_OPTIONS` updated by ``options``."""
    values = {"dataset": "custom", "train_list": str(root / "train.txt"),
              "test_list": str(root / "test.txt"), "class_names": str(root / "classes.txt"),
              "image_root": str(root), "run_dir": str(run_dir), **TINY_OPTIONS, **options}
    path.write_text("class CFG:\n" + "".join(f"    {key} = {value!r}\n" for key, value in values.items()))
    return path


def truncate(path: Path) -> None:
    """Cut an image file to half its bytes, as an interrupted download leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
