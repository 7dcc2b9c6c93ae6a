"""A small synthetic long-tailed multi-label dataset in exactly the benchmark's file format.

Each class is a shape in a colour of its own ("red circle", "green square", ...) drawn on a
noisy background, 1-4 objects per image, one per quadrant, each filling most of its quadrant.
The twenty colours are far apart (every channel 0, 128 or 255), so that a tiny CLIP trained
from random weights tells the classes apart within a few epochs (the demo's 64 test mAP);
with five colours shared by four shapes each, and smaller objects, it learnt the colours
but hardly the forms (31). The training set has VOC-MLT's per-class image counts exactly
(``TRAIN_CLASS_COUNTS``, 1,142 images), so the groups come out 6 / 6 / 8 like VOC-MLT's; the
test set has 1,500 images with classes drawn uniformly. Same seed, same bytes.
"""
import contextlib
import fcntl
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

GENERATOR_VERSION = 2
# Images per class in VOC-MLT's training split (class_split.json, "train_class_freq").
TRAIN_CLASS_COUNTS = [6, 34, 8, 14, 154, 17, 249, 29, 479, 4, 240, 48, 11, 20, 775, 100, 5, 82, 7, 64]
NUM_TRAIN_IMAGES = 1142  # as VOC-MLT: 2,346 labels over 1,142 images, 1-4 per image
NUM_TEST_IMAGES = 1500
MAX_OBJECTS = 4  # one per quadrant
COLOURS = {
    "red": (255, 0, 0), "green": (0, 128, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "magenta": (255, 0, 255), "cyan": (0, 255, 255), "orange": (255, 128, 0), "purple": (128, 0, 128),
    "pink": (255, 128, 255), "lime": (128, 255, 0), "teal": (0, 128, 128), "navy": (0, 0, 128),
    "maroon": (128, 0, 0), "olive": (128, 128, 0), "white": (255, 255, 255), "black": (0, 0, 0),
    "violet": (128, 0, 255), "azure": (0, 128, 255), "mint": (128, 255, 128), "salmon": (255, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "cross")
CLASS_NAMES = [f"{colour} {SHAPES[index % len(SHAPES)]}" for index, colour in enumerate(COLOURS)]
MARKER = "synthetic_mlt.json"


def _train_label_sets(rng: np.random.Generator) -> list[list[int]]:
    """Label sets with exactly TRAIN_CLASS_COUNTS images per class and 1-4 classes per image."""
    sizes = np.ones(NUM_TRAIN_IMAGES, dtype=np.int64)
    for _ in range(sum(TRAIN_CLASS_COUNTS) - NUM_TRAIN_IMAGES):
        sizes[rng.choice(np.flatnonzero(sizes < MAX_OBJECTS))] += 1
    # Ryser's construction: place the most frequent classes first, each into the images with
    # the most free slots (random tie-break); it succeeds whenever the counts are realisable.
    free, label_sets = sizes.copy(), [[] for _ in range(NUM_TRAIN_IMAGES)]
    for label in np.argsort(TRAIN_CLASS_COUNTS, kind="stable")[::-1]:
        priority = free + rng.random(NUM_TRAIN_IMAGES)
        for image in np.argsort(-priority, kind="stable")[:TRAIN_CLASS_COUNTS[label]]:
            label_sets[image].append(int(label))
            free[image] -= 1
    return [[int(label) for label in rng.permutation(labels)] for labels in label_sets]


def _test_label_sets(rng: np.random.Generator) -> list[list[int]]:
    sizes = rng.integers(1, MAX_OBJECTS + 1, NUM_TEST_IMAGES)
    return [[int(label) for label in rng.choice(len(CLASS_NAMES), size, replace=False)] for size in sizes]


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], colour) -> None:
    left, top, right, bottom = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "triangle":
        draw.polygon([((left + right) // 2, top), (left, bottom), (right, bottom)], fill=colour)
    else:  # cross: a horizontal and a vertical bar, a third of the size thick
        third = (right - left) // 3
        draw.rectangle((left, top + third, right, bottom - third), fill=colour)
        draw.rectangle((left + third, top, right - third, bottom), fill=colour)


def _render(labels: list[int], image_size: int, rng: np.random.Generator) -> Image.Image:
    """Noisy background, then one object per label, each in its own quadrant with some jitter."""
    image = Image.fromarray(rng.integers(60, 160, (image_size, image_size, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(image)
    cell = image_size // 2
    for label, quadrant in zip(labels, rng.permutation(MAX_OBJECTS)):
        size = int(rng.integers(cell * 12 // 16, cell * 15 // 16 + 1))
        left = (quadrant % 2) * cell + int(rng.integers(0, cell - size + 1))
        top = (quadrant // 2) * cell + int(rng.integers(0, cell - size + 1))
        colour, shape = CLASS_NAMES[label].split()
        _draw_shape(draw, shape, (left, top, left + size - 1, top + size - 1), COLOURS[colour])
    return image


def _caption(labels: list[int]) -> str:
    objects = [f"a {CLASS_NAMES[label]}" for label in labels]
    listed = objects[0] if len(objects) == 1 else ", ".join(objects[:-1]) + " and " + objects[-1]
    return f"a noisy picture with {listed}"


def _write_lines(path: Path, lines) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def generate(root, seed: int = 0, image_size: int = 64) -> Path:
    """Write the dataset into ``root``: ``images/{train,test}/NNNNNN.jpg`` and the files
    ``synthetic_lt_train.txt``, ``synthetic_lt_test.txt``, ``synthetic_lt_captions.txt``,
    ``synthetic_labels.txt`` (split paths relative to ``images/``), then the marker file."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    splits = {"train": _train_label_sets(rng), "test": _test_label_sets(rng)}
    split_lines = {}
    for split, label_sets in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        paths = [f"{split}/{index:06d}.jpg" for index in range(len(label_sets))]
        for path, labels in zip(paths, label_sets):
            _render(labels, image_size, rng).save(root / "images" / path, format="JPEG", quality=90)
        split_lines[split] = [" ".join([path, *map(str, labels)]) for path, labels in zip(paths, label_sets)]
        if split == "train":
            _write_lines(root / "synthetic_lt_captions.txt",
                         [f"{path} {_caption(labels)}" for path, labels in zip(paths, label_sets)])
    _write_lines(root / "synthetic_lt_train.txt", split_lines["train"])
    _write_lines(root / "synthetic_lt_test.txt", split_lines["test"])
    _write_lines(root / "synthetic_labels.txt", [f"{name} {index}" for index, name in enumerate(CLASS_NAMES)])
    (root / MARKER).write_text(json.dumps(_marker(seed, image_size)) + "\n")
    return root


def _marker(seed: int, image_size: int) -> dict:
    return {"generator_version": GENERATOR_VERSION, "seed": seed, "image_size": image_size}


def _is_complete(root: Path, seed: int, image_size: int) -> bool:
    try:
        return json.loads((root / MARKER).read_text()) == _marker(seed, image_size)
    except (OSError, ValueError):
        return False


@contextlib.contextmanager
def locked(folder: Path):
    """Holds an exclusive lock on ``folder`` (a lock on the folder itself: no lock file
    is left behind); released when the block ends or the process dies."""
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)


def ensure_synthetic(root, seed: int = 0, image_size: int = 64) -> Path:
    """Generate the dataset into ``root`` unless it already holds this seed's data.

    Generation goes to a temporary sibling folder that is renamed into place, so an
    interrupted run never leaves a half-written dataset; a ``root`` made with another seed or
    generator version is replaced. Several processes calling it at once (test workers, the
    processes of one node) generate it once: the others wait for it, and never see a
    complete ``root`` renamed away under them.
    """
    root = Path(root)
    if _is_complete(root, seed, image_size):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with locked(root.parent):
        if _is_complete(root, seed, image_size):  # generated by another process meanwhile
            return root
        staging = Path(tempfile.mkdtemp(dir=root.parent, prefix=f".{root.name}.new-"))
        staging.chmod(0o755)  # mkdtemp makes it private; the dataset is not
        retired = staging.with_name(staging.name + ".old")
        try:
            generate(staging, seed, image_size)
            if root.exists():
                os.rename(root, retired)
            os.rename(staging, root)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
            shutil.rmtree(retired, ignore_errors=True)
    return root
