"""train.py on bad inputs, run as a user runs it (a subprocess): each fails before training
with exit code 1 and a one-paragraph message (no traceback) that names the file, the line or
the images, or, with skip_unreadable_images, leaves unreadable images out and counts them.

Each case is a tiny custom dataset (tests/tiny_dataset.py) with one defect; all the train.py
processes run at once, so the file costs about one process start-up."""
import subprocess
import sys
from pathlib import Path

import pytest

from tailclip.logger import read_metrics
from tiny_dataset import TRAIN_LABELS, split_lines, truncate, write_config, write_dataset, write_lines

REPO = Path(__file__).resolve().parents[1]
VOC_DOWNLOAD = "bash datasets/voc_mlt/download_voc_mlt.sh"


def tiny(case: Path, **options) -> tuple[Path, list[str]]:
    """The tiny dataset in ``case/data`` and train.py's arguments for it."""
    root = write_dataset(case / "data")
    return root, [f"--config={write_config(case / 'tiny.py', root, case / 'runs', **options)}"]


def missing_images(case: Path):
    root, args = tiny(case)
    removed = [f"images/train/{index:02d}.jpg" for index in range(12)]
    for path in removed:
        (root / path).unlink()
    first_ten = "".join(f"\n  {root / path}" for path in removed[:10])
    return args, [f"12 of 24 images listed in the splits are missing under {root}; the first 10:{first_ten}\n"
                  "To get them: check the option image_root"], [str(root / removed[10])]


def voc_args(case: Path) -> list[str]:
    # The published config, as run before any download: the check must come before the
    # ViT-B/16 weights are loaded (or downloaded).
    return ["--config=configs/voc_mlt_vitb16.py", "--set", f"data_root={case}",
            "--set", f"run_dir={case / 'runs'}", "--set", "device=cpu"]


def voc_not_downloaded(case: Path):
    folder = case / "voc_mlt"
    return voc_args(case), [f"dataset 'voc_mlt': missing {folder / 'voc_lt_train.txt'}, ",
                            f"To get them: {VOC_DOWNLOAD}"], []


def voc_images_not_downloaded(case: Path):
    folder = case / "voc_mlt"
    folder.mkdir()
    paths = [f"VOCdevkit/VOC2012/JPEGImages/2008_{index:06d}.jpg" for index in range(14)]
    write_lines(folder / "voc_lt_train.txt", [f"{path} {index % 2}" for index, path in enumerate(paths[:12])])
    write_lines(folder / "voc_lt_test.txt", [f"{path} 0" for path in paths[12:]])
    write_lines(folder / "voc_labels.txt", ["aeroplane 0", "bicycle 1"])
    return voc_args(case), [f"14 of 14 images listed in the splits are missing under {folder}; the first 10:"
                            f"\n  {folder / paths[0]}\n", f"\n  {folder / paths[9]}\nTo get them: {VOC_DOWNLOAD}"], \
        [paths[10]]


def truncated_jpeg(case: Path, image_cache: bool):
    root, args = tiny(case, image_cache=image_cache)
    truncate(root / "images/train/05.jpg")
    return args, [f"cannot read image {root / 'images/train/05.jpg'}", "truncated"], []


def label_out_of_range(case: Path):
    root, args = tiny(case)
    lines = split_lines("train", TRAIN_LABELS)
    lines[2] += " 9"
    write_lines(root / "train.txt", lines)
    return args, [f"{root / 'train.txt'}:3: label 9 is out of range"], []


def empty_split(case: Path):
    root, args = tiny(case)
    (root / "test.txt").write_text("")
    return args, [f"{root / 'test.txt'}: file is empty"], []


def class_without_training_image(case: Path):
    root, args = tiny(case)
    write_lines(root / "train.txt", split_lines("train", [[label for label in labels if label != 2] or [0]
                                                          for labels in TRAIN_LABELS]))
    return args, [f"{root / 'train.txt'}: classes with no training image: [2]",
                  f"2 'red car' in {root / 'classes.txt'}"], []


def unknown_class(case: Path):
    # The class-name file lists 3 classes, the split files use 4: class 3 is unknown.
    root, args = tiny(case)
    write_lines(root / "classes.txt", ["cat 0", "dog 1", "red car 2"])
    first = next(number for number, labels in enumerate(TRAIN_LABELS, start=1) if 3 in labels)
    return args, [f"{root / 'train.txt'}:{first}: label 3 is out of range: unknown class "
                  f"({root / 'classes.txt'} defines 3 classes, 0 to 2)"], []


FAILURES = {
    "missing_images": missing_images,
    "voc_not_downloaded": voc_not_downloaded,
    "voc_images_not_downloaded": voc_images_not_downloaded,
    "truncated_jpeg_cached": lambda case: truncated_jpeg(case, image_cache=True),
    "truncated_jpeg_uncached": lambda case: truncated_jpeg(case, image_cache=False),
    "label_out_of_range": label_out_of_range,
    "empty_split": empty_split,
    "class_without_training_image": class_without_training_image,
    "unknown_class": unknown_class,
}
SKIPPED = ["images/train/05.jpg", "images/test/03.jpg"]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every case's (expected, unexpected, exit code, stdout, stderr, folder); the processes
    run concurrently."""
    cases = {}
    for name, prepare in FAILURES.items():
        folder = tmp_path_factory.mktemp(name)
        cases[name] = (folder, *prepare(folder))
    # With skip_unreadable_images: one unreadable training and one test image; no sample
    # weights, so that the epoch visits every training image once.
    folder = tmp_path_factory.mktemp("skipped")
    root, args = tiny(folder, skip_unreadable_images=True, use_sample_weights=False)
    for path in SKIPPED:
        truncate(root / path)
    cases["skip_unreadable"] = (folder, args, [], [])

    processes = {name: subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for name, (_, args, _, _) in cases.items()}
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=240)
        folder, _, expected, unexpected = cases[name]
        results[name] = (expected, unexpected, process.returncode, stdout, stderr, folder)
    return results


@pytest.mark.parametrize("case", FAILURES)
def test_bad_input_stops_with_a_message(outcomes, case):
    expected, unexpected, code, stdout, stderr, folder = outcomes[case]
    assert code == 1, stderr[-3000:]
    assert stderr.startswith("error: ") and "Traceback" not in stderr, stderr[-3000:]
    for text in expected:
        assert text in stderr
    for text in unexpected:
        assert text not in stderr
    if case != "truncated_jpeg_uncached":  # that one is met in the first epoch
        assert "training " not in stdout  # stopped before the model was built
    assert not list(folder.glob("runs/*/*.pt"))


def test_unreadable_images_are_skipped_and_counted(outcomes):
    _, _, code, stdout, stderr, folder = outcomes["skip_unreadable"]
    assert code == 0, stderr[-3000:]
    root = folder / "data"
    for path in SKIPPED:
        assert stderr.count(f"skipping unreadable image: cannot read image {root / path}") == 1
    assert "unreadable images left out: 1 train, 1 test" in stdout
    [record] = read_metrics(folder / "runs" / "tiny")
    assert (record["data/unreadable_train_images"], record["data/unreadable_test_images"]) == (1, 1)
