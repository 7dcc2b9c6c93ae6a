"""Split, class-name and caption readers: the real benchmark files and malformed input."""
import json
from collections import Counter

import pytest

from tailclip.data import SplitFormatError, class_groups, read_captions, read_class_names, read_split

BENCHMARKS = {
    # dataset: (file prefix, classes, train images, test images, unlabelled test images)
    "voc_mlt": ("voc", 20, 1142, 4952, 0),
    "coco_mlt": ("coco", 80, 1909, 5000, 48),
}


@pytest.mark.parametrize("dataset", BENCHMARKS)
def test_real_split_files(shared_data, dataset):
    prefix, num_classes, num_train, num_test, num_unlabelled = BENCHMARKS[dataset]
    folder = shared_data / dataset
    published = json.loads((folder / "class_split.json").read_text())

    names = read_class_names(folder / f"{prefix}_labels.txt")
    train = read_split(folder / f"{prefix}_lt_train.txt", len(names))
    test = read_split(folder / f"{prefix}_lt_test.txt", len(names))

    assert (len(names), len(train), len(test)) == (num_classes, num_train, num_test)
    assert sum(not entry.labels for entry in test) == num_unlabelled
    assert all(entry.labels for entry in train)
    counts = Counter(label for entry in train for label in entry.labels)
    assert [counts[c] for c in range(num_classes)] == published["train_class_freq"]
    groups = class_groups([entry.labels for entry in train], num_classes)
    assert groups == {key: published[key] for key in ("head", "medium", "tail")}

    captions = read_captions(folder / f"{prefix}_lt_captions.txt", [entry.path for entry in train])
    assert set(captions) == {entry.path for entry in train}
    assert all(caption and caption == caption.strip() for caption in captions.values())


def test_real_files_details(shared_data):
    voc_names = read_class_names(shared_data / "voc_mlt" / "voc_labels.txt")  # CRLF, trailing spaces
    assert voc_names[:3] == ["aeroplane", "bicycle", "bird"] and voc_names[14] == "person"
    coco_names = read_class_names(shared_data / "coco_mlt" / "coco_labels.txt")
    assert coco_names[9:12] == ["traffic light", "fire hydrant", "stop sign"]
    train = read_split(shared_data / "coco_mlt" / "coco_lt_train.txt", 80)  # every line ends in a space
    assert train[0].path == "train2017/000000554625.jpg" and train[0].labels == (0, 62, 64, 66)
    voc_test = read_split(shared_data / "voc_mlt" / "voc_lt_test.txt", 20)
    assert voc_test[0].labels == (14, 11)  # file order, not sorted


def test_labels_are_a_set_in_file_order(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("a.jpg 3 1 3 1 \r\nb.jpg\nc.jpg   2\t0\n")
    entries = read_split(path, 4)
    assert [(e.path, e.labels) for e in entries] == [("a.jpg", (3, 1)), ("b.jpg", ()), ("c.jpg", (2, 0))]


def test_class_names_in_index_order(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("dining table 1 \nperson 0\n")
    assert read_class_names(path) == ["person", "dining table"]


def _check_error(path, text, read, line, message):
    path.write_text(text)
    with pytest.raises(SplitFormatError) as error:
        read(path)
    where = f"{path}:{line}:" if line else f"{path}:"
    assert str(error.value).startswith(where), str(error.value)
    assert message in str(error.value)


@pytest.mark.parametrize("text, line, message", [
    ("a.jpg 1\nb.jpg 20\n", 2, "label 20 is out of range"),
    ("a.jpg -1\n", 1, "'-1' is not a non-negative integer"),
    ("a.jpg 1.0\n", 1, "'1.0' is not a non-negative integer"),
    ("a b.jpg 1\n", 1, "'b.jpg' is not a non-negative integer; the line is '<image path> <label> ...', "
                       "and an image path cannot contain spaces"),
    ("a.jpg 1\n\nb.jpg 2\n", 2, "blank line"),
    ("a.jpg 1\nb.jpg 2\na.jpg 3\n", 3, "already listed on line 1"),
    ("", None, "file is empty"),
])
def test_malformed_split(tmp_path, text, line, message):
    _check_error(tmp_path / "split.txt", text, lambda p: read_split(p, 20), line, message)


@pytest.mark.parametrize("text, line, message", [
    ("cat 0\ndog\n", 2, "expected '<class name> <index>'"),
    ("cat 0\ndog x\n", 2, "class index 'x'"),
    ("cat 0\ndog 0\n", 2, "class index 0 already used on line 1"),
    ("cat 0\ndog 3\n", None, "missing [1, 2]"),
    ("cat 0\ncat 1\n", None, "used more than once: ['cat']"),
    ("cat 0\n\ndog 1\n", 2, "blank line"),
    ("\n", None, "file is empty"),
    ("", None, "file is empty"),
])
def test_malformed_class_names(tmp_path, text, line, message):
    _check_error(tmp_path / "labels.txt", text, read_class_names, line, message)


@pytest.mark.parametrize("text, line, message", [
    ("a.jpg a cat\nz.jpg a dog\n", 2, "caption for z.jpg, which is not in the split"),
    ("a.jpg a cat\na.jpg a dog\n", 2, "second caption for a.jpg (first on line 1)"),
    ("a.jpg a cat\nb.jpg\n", 2, "expected '<image path> <caption>'"),
    ("a.jpg a cat\n", None, "1 image of the split has no caption, first: ['b.jpg']"),
])
def test_malformed_captions(tmp_path, text, line, message):
    _check_error(tmp_path / "captions.txt", text, lambda p: read_captions(p, ["a.jpg", "b.jpg"]),
                 line, message)


def test_not_utf8(tmp_path):
    path = tmp_path / "split.txt"
    path.write_bytes(b"a.jpg 1\n\xff\xfe.jpg 0\n")
    with pytest.raises(SplitFormatError, match="not UTF-8 text") as error:
        read_split(path, 2)
    assert str(error.value).startswith(f"{path}:")


def test_blank_lines_at_the_end_are_accepted(tmp_path):
    path = tmp_path / "split.txt"
    path.write_text("a.jpg 1\nb.jpg\n\n  \n")
    assert [(entry.path, entry.labels) for entry in read_split(path, 20)] == [("a.jpg", (1,)), ("b.jpg", ())]
