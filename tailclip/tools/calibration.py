"""``test.py --calibrate SPLIT``: per-class thresholds chosen on a split that the test never
sees, and the test split's decision metrics with them.

SPLIT is a list file in the split format (image paths relative to the dataset's image root)
or ``train``, the training split. On images the model has learnt (``train``, or a file made
only of training images) the thresholds are optimistic, and a warning says so. The test split
itself, or a file sharing an image with it, is refused.
"""
import dataclasses
import os
from pathlib import Path

from tailclip.data.captions import label_caption
from tailclip.data.datasets import MultiLabelDataset, caption_tokens, check_images_exist
from tailclip.data.splits import read_split
from tailclip.data.transforms import build_transform
from tailclip.engine.batches import build_split_batches
from tailclip.engine.evaluation import evaluate_model
from tailclip.errors import MissingFileError, TailCLIPError
from tailclip.text_tokens import text_tokenizer
from tailclip.thresholds import calibrate, decision_metrics, per_class, scalar_metrics, thresholds_file_name

TRAIN = "train"
TRAIN_WARNING = ("calibrating on {what}, which the model has learnt: its thresholds "
                 "are optimistic (a held-out list file gives honest ones)")


class CalibrationSplitError(TailCLIPError):
    """A calibration split that would leak the test split into its thresholds."""


def calibration_entries(split: str, data) -> list:
    """The entries of ``split`` (``train`` or a list file); refuses the test split and any
    file that shares an image with it."""
    if split == TRAIN:
        return data.train.entries
    path = Path(split)
    if not path.is_file():
        raise MissingFileError(f"--calibrate {split}: no such split file (or give 'train')")
    if os.path.samefile(path, data.files.test_list):
        raise CalibrationSplitError(f"--calibrate {split} is the test split that the report is on: "
                                    "calibrate on another split (a held-out list file, or 'train')")
    entries = read_split(path, len(data.class_names), data.files.class_names)
    test_images = {entry.path for entry in data.test.entries}
    shared = [entry.path for entry in entries if entry.path in test_images]
    if shared:
        raise CalibrationSplitError(f"--calibrate {split}: {len(shared)} of its {len(entries)} images are "
                                    f"in the test split (first: {shared[0]}); the thresholds must "
                                    "come from images the test does not see")
    check_images_exist(data.files.image_root, entries, data.files.download_hint)
    return entries


def _evaluation_data(cfg, data, entries):
    """``data`` with ``entries`` as its evaluation split (test transform and captions)."""
    captions = [label_caption(cfg.class_caption, data.class_names, entry.labels) for entry in entries]
    split = MultiLabelDataset(data.files.image_root, entries, len(data.class_names),
                              build_transform(cfg.size, False, cfg.normalize),
                              caption_tokens(captions, text_tokenizer(cfg)), cfg.skip_unreadable_images)
    return dataclasses.replace(data, test=split)


def learnt_warning(split: str, entries, data) -> str | None:
    """Why thresholds from ``entries`` are optimistic: the model has learnt every image."""
    if split == TRAIN:
        return TRAIN_WARNING.format(what="the training split")
    train_images = {entry.path for entry in data.train.entries}
    if all(entry.path in train_images for entry in entries):
        return TRAIN_WARNING.format(what=f"{split}, whose {len(entries)} images are all training images")
    return None


def calibrated_report(cfg, data, model, objective, entries, split: str, checkpoint: str, test_result, device,
                      precision: str, target_precision: float | None) -> dict:
    """Thresholds from ``entries`` and the test split's metrics with them (``test_result``:
    the test ``Evaluation``, whose decision score the thresholds apply to): the report's
    ``calibrated`` section."""
    calibration_data = _evaluation_data(cfg, data, entries)
    batches = build_split_batches(cfg, calibration_data, train=False, device=device)
    score = test_result.decision_score
    on_split = evaluate_model(model, objective, batches.batches(device), calibration_data.test.caption_tokens,
                              device, precision, data.groups, score=score)
    warning = learnt_warning(split, entries, data)
    thresholds, notes = calibrate(on_split.decision_values, on_split.targets, score, target_precision)
    at_thresholds = decision_metrics(test_result.decision_values.numpy() >= thresholds, test_result.targets,
                                     data.groups)
    return {
        "split": split,
        "num_images": len(on_split.targets),
        **({"warning": warning} if warning else {}),
        "target_precision": target_precision,
        "score": score.name,
        "thresholds_file": thresholds_file_name(checkpoint),
        "thresholds": dict(zip(data.class_names, thresholds.tolist())),
        "notes": {data.class_names[c]: note for c, note in sorted(notes.items())},
        "metrics": scalar_metrics(at_thresholds),
        "per_class": per_class(at_thresholds, data.class_names),
    }
