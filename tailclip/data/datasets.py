"""Where each benchmark's files live, the multi-label dataset, and ``build_data(cfg)``."""
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, default_collate

from tailclip.config import ConfigError, resolve_path
from tailclip.errors import MissingFileError, TailCLIPError
from tailclip.text_tokens import text_tokenizer
from tailclip.wording import count

from .balance import balance_weights, class_groups
from .captions import fit_to_context, label_caption, label_prompts
from .splits import SplitEntry, SplitFormatError, read_captions, read_class_names, read_split
from .synthetic import ensure_synthetic
from .transforms import build_transform

SYNTHETIC_SEED = 0  # the demo data stays the same whatever the run's seed
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetSpec:
    """A benchmark's files inside ``<data_root>/<folder>/``; split paths are relative to ``image_root``."""
    folder: str
    train_list: str
    test_list: str
    captions: str
    class_names: str
    image_root: str  # relative to the folder
    download_hint: str  # how to get the images, shown when some are missing
    sha256: dict[str, str] = field(default_factory=dict)  # the pinned files' by name (the benchmarks': LMPT's)


DATASETS = {
    "voc_mlt": DatasetSpec(
        "voc_mlt", "voc_lt_train.txt", "voc_lt_test.txt", "voc_lt_captions.txt", "voc_labels.txt", ".",
        "bash datasets/voc_mlt/download_voc_mlt.sh", sha256={
            "voc_lt_train.txt": "2111a5e58ae8b67a112a2b2c8aa98fe8fa926ac3e1d73e2e4e0e4844c90cc047",
            "voc_lt_test.txt": "43b2929a86e9fe685cdf3b6b72fb90b6838ff9f9f427807e8b9502111e73750a",
            "voc_lt_captions.txt": "a986c2d493d4258aa470fe0b48b66b12c1ec338e4341dda3fb4c46ef9865f273",
            "voc_labels.txt": "59e82ce7a1fa096b8a80c22cc72e6c86e54c598b2e1cfe08a211f1c82a0dcb2c"}),
    "coco_mlt": DatasetSpec(
        "coco_mlt", "coco_lt_train.txt", "coco_lt_test.txt", "coco_lt_captions.txt", "coco_labels.txt", "images",
        "bash datasets/coco_mlt/download_coco_mlt.sh", sha256={
            "coco_lt_train.txt": "8e0c354ae2214d7ced46f4a5ae24236149296be4dcd2df74f00eba2abe6be0ce",
            "coco_lt_test.txt": "4dda722463b0ed3aada172ce1c75f46f1391e4d2bee7643760549f916a8022e5",
            "coco_lt_captions.txt": "4bcc3de5c20e3561f6bbe90188c00cea3adf1eab58245f761e4fd9b93319fecd",
            "coco_labels.txt": "a16d52dc65d8bc2b7abe5875199d802e951b7af142b327f8c85b496116a87f45"}),
    "synthetic_mlt": DatasetSpec("synthetic_mlt", "synthetic_lt_train.txt", "synthetic_lt_test.txt",
                                 "synthetic_lt_captions.txt", "synthetic_labels.txt", "images",
                                 "delete the dataset folder; it is generated again on first use"),
}


@dataclass(frozen=True)
class DataFiles:
    """Absolute paths of one dataset's files."""
    train_list: Path
    test_list: Path
    class_names: Path
    captions: Path | None
    image_root: Path
    download_hint: str


def dataset_files(cfg) -> DataFiles:
    """The files of ``cfg.dataset``: a benchmark under ``cfg.data_root`` or the custom paths."""
    if cfg.dataset == "custom":
        return DataFiles(resolve_path(cfg.train_list), resolve_path(cfg.test_list),
                         resolve_path(cfg.class_names),
                         resolve_path(cfg.captions) if cfg.captions else None,
                         resolve_path(cfg.image_root), "check the option image_root")
    if cfg.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {cfg.dataset!r}; expected one of {[*DATASETS, 'custom']}")
    spec = DATASETS[cfg.dataset]
    folder = resolve_path(cfg.data_root) / spec.folder
    return DataFiles(folder / spec.train_list, folder / spec.test_list, folder / spec.class_names,
                     folder / spec.captions, folder / spec.image_root, spec.download_hint)


class UnreadableImageError(TailCLIPError, OSError):
    """An image file exists but cannot be decoded (corrupt, truncated, not an image)."""


# The range an image of each wide mode is scaled to 8 bits from: the full range of its
# samples, so that a stored value means one brightness in every image, as for 8-bit images
# (an image's own minimum and maximum would stretch a dark scan to full contrast). Pillow
# decodes 16-bit greyscale as I;16* or, from some formats, as 32-bit I; float samples are
# taken in [0, 1]. Pillow's own conversion clips them at 255 (a 16-bit scan turns white).
WIDE_MODE_RANGES = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": 65535, "F": 1.0}
# Modes that Pillow converts to RGB by copying channels, not colours (LAB needs a colour profile).
UNFAITHFUL_MODES = ("LAB",)


def _eight_bit(image: Image.Image) -> Image.Image:
    """``image`` in a mode that converts faithfully to RGB: a wide mode scaled to 8 bits from
    `WIDE_MODE_RANGES`; an unfaithful mode, or samples outside the range, is a ValueError."""
    if image.mode in UNFAITHFUL_MODES:
        raise ValueError(f"mode {image.mode} has no faithful RGB conversion; save it as RGB")
    top = WIDE_MODE_RANGES.get(image.mode)
    if top is None:
        return image
    samples = np.asarray(image, dtype=np.float64)
    low, high = samples.min(initial=0), samples.max(initial=0)
    if low < 0 or high > top:
        raise ValueError(f"mode {image.mode} samples from {low:g} to {high:g} lie outside 0..{top:g}, "
                         "the range it is read in; save it in 8 or 16 bits")
    return Image.fromarray(np.rint(samples * (255 / top)).astype(np.uint8))


def load_image(path) -> Image.Image:
    """Decode an image fully into RGB, 16-bit, 32-bit and float greyscale scaled to 8 bits
    from their range (`WIDE_MODE_RANGES`); any failure is an ``UnreadableImageError`` naming
    the file.

    ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is left False, so a truncated JPEG fails here
    instead of being padded with grey.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return _eight_bit(image).convert("RGB")
    # Pillow reports broken files as OSError, or as SyntaxError/EOFError/ValueError in some plugins.
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as error:
        raise UnreadableImageError(f"cannot read image {path}: {error}") from error


def check_images_exist(image_root, entries, download_hint: str) -> None:
    """Raise ``MissingFileError`` listing how many images are missing, the first ten, and how to get them."""
    image_root = Path(image_root)
    missing = [str(image_root / entry.path) for entry in entries if not (image_root / entry.path).is_file()]
    if missing:
        verb, listed = (("is", "it is") if len(missing) == 1
                        else ("are", "the first 10" if len(missing) > 10 else "they are"))
        raise MissingFileError(
            f"{len(missing)} of {count(len(entries), 'image')} listed in the splits {verb} missing under "
            f"{image_root}; {listed}:\n  " + "\n  ".join(missing[:10])
            + f"\nTo get them: {download_hint}")


def check_dataset_files(files: DataFiles, dataset: str) -> None:
    """Raise ``MissingFileError`` naming the split or class-name files that do not exist."""
    missing = [str(path) for path in (files.train_list, files.test_list, files.class_names)
               if not path.is_file()]
    if missing:
        hint = ("check the options train_list, test_list and class_names" if dataset == "custom"
                else files.download_hint)
        raise MissingFileError(f"dataset {dataset!r}: missing {', '.join(missing)}\nTo get them: {hint}")


def multi_hot(label_sets, num_classes: int) -> torch.Tensor:
    """Float targets [N, C] with 1 where an image has the class."""
    targets = torch.zeros(len(label_sets), num_classes)
    for row, labels in enumerate(label_sets):
        targets[row, list(labels)] = 1.0
    return targets


class MultiLabelDataset(Dataset):
    """Items ``(image [3, H, W] float, target [C] float multi-hot, caption_tokens [L] int64, index)``.

    ``caption_tokens`` is an int64 tensor [N, L] (None: empty [0] tokens per item). With
    ``skip_unreadable`` an image that cannot be decoded gives the item None (use
    ``collate_skip_none``) and is logged once; ``unreadable`` flags those met so far,
    including in DataLoader worker processes.
    """

    def __init__(self, image_root, entries: list[SplitEntry], num_classes: int, transform,
                 caption_tokens: torch.Tensor | None = None, skip_unreadable: bool = False):
        self.image_root = Path(image_root)
        self.entries = list(entries)
        self.label_sets = [entry.labels for entry in self.entries]
        self.targets = multi_hot(self.label_sets, num_classes)
        self.transform = transform
        if caption_tokens is None:
            caption_tokens = torch.zeros(len(self.entries), 0, dtype=torch.long)
        if len(caption_tokens) != len(self.entries):
            raise ValueError(f"{len(caption_tokens)} caption token rows for {len(self.entries)} images")
        self.caption_tokens = caption_tokens
        self.skip_unreadable = skip_unreadable
        # Which images were found unreadable. Shared memory: flags set while loading in
        # worker processes are visible here.
        self.unreadable = torch.zeros(len(self.entries), dtype=torch.bool).share_memory_()

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, index: int) -> Path:
        return self.image_root / self.entries[index].path

    def __getitem__(self, index: int):
        try:
            image = load_image(self.image_path(index))
        except UnreadableImageError as error:
            if not self.skip_unreadable:
                raise
            if not self.unreadable[index]:
                log.warning("skipping unreadable image: %s", error)
            self.unreadable[index] = True
            return None
        return self.transform(image), self.targets[index], self.caption_tokens[index], index

def collate_skip_none(items):
    """``default_collate`` of the items that are not None; None when the whole batch was unreadable.

    How many images were left out is ``MultiLabelDataset.unreadable`` (a count made here
    would stay inside the DataLoader worker that ran it).
    """
    kept = [item for item in items if item is not None]
    return default_collate(kept) if kept else None


def caption_tokens(texts, tokenizer) -> torch.Tensor:
    """Token ids [N, context_length] by the backbone's ``tokenizer`` (`tailclip.text_tokens`),
    each caption cut to its longest whole-word prefix that fits."""
    fitted = [fit_to_context(text, tokenizer, tokenizer.context_length) for text in texts]
    return tokenizer(fitted)


@dataclass
class DataBundle:
    """Everything training and evaluation need from the data."""
    class_names: list[str]
    label_prompts: list[str]  # class_caption + name, one per class
    train: MultiLabelDataset
    test: MultiLabelDataset
    train_captions: list[str]  # before fitting to the context length
    groups: dict[str, list[int]]  # "head" / "medium" / "tail" class indices
    class_weights: torch.Tensor  # float32 [C], for the balanced loss
    sample_weights: torch.Tensor  # float64 [N_train], for the sampler
    files: DataFiles

    @property
    def class_priors(self) -> torch.Tensor:
        """float64 [C]: the fraction of training images that contain each class."""
        return self.train.targets.double().mean(0)

    @property
    def train_targets(self) -> torch.Tensor:
        return self.train.targets


def _train_captions(cfg, files: DataFiles, class_names, entries) -> list[str]:
    if not cfg.use_dataset_train_captions:
        return [label_caption(cfg.class_caption, class_names, entry.labels) for entry in entries]
    if files.captions is None:
        raise ConfigError("use_dataset_train_captions = True needs a caption file (option 'captions')")
    captions = read_captions(files.captions, [entry.path for entry in entries])
    return [captions[entry.path] for entry in entries]


def build_data(cfg, train_images: bool = True) -> DataBundle:
    """Read, check and assemble the dataset that ``cfg`` names (see docs/options.md).

    ``train_images=False`` (evaluation) checks only the test images: the class counts and
    groups come from the training split file, whose images are never read."""
    files = dataset_files(cfg)
    if cfg.dataset == "synthetic_mlt":
        ensure_synthetic(files.train_list.parent, SYNTHETIC_SEED)  # the dataset folder
    check_dataset_files(files, cfg.dataset)
    class_names = read_class_names(files.class_names)
    num_classes = len(class_names)
    train_entries = read_split(files.train_list, num_classes, files.class_names)
    test_entries = read_split(files.test_list, num_classes, files.class_names)
    check_images_exist(files.image_root, (train_entries if train_images else []) + test_entries,
                       files.download_hint)

    train_label_sets = [entry.labels for entry in train_entries]
    try:
        groups = class_groups(train_label_sets, num_classes)
    except ValueError as error:  # a class without training images: say which file and class
        present = set().union(*train_label_sets)
        empty = [f"{index} {name!r}" for index, name in enumerate(class_names) if index not in present]
        raise SplitFormatError(f"{files.train_list}: {error}. Without images: {', '.join(empty[:10])}"
                               f"{', ...' if len(empty) > 10 else ''} (class names from {files.class_names})") from None
    class_weights, sample_weights = balance_weights(
        train_label_sets, num_classes, cfg.class_weights_power, cfg.sample_weights_power)
    train_captions = _train_captions(cfg, files, class_names, train_entries)
    test_captions = [label_caption(cfg.class_caption, class_names, entry.labels) for entry in test_entries]

    tokenizer = text_tokenizer(cfg)

    def dataset(entries, captions, train: bool) -> MultiLabelDataset:
        return MultiLabelDataset(files.image_root, entries, num_classes,
                                 build_transform(cfg.size, train, cfg.normalize),
                                 caption_tokens(captions, tokenizer), cfg.skip_unreadable_images)

    return DataBundle(class_names, label_prompts(cfg.class_caption, class_names),
                      dataset(train_entries, train_captions, True),
                      dataset(test_entries, test_captions, False),
                      train_captions, groups, class_weights.float(), sample_weights, files)
