"""Synthetic demo data: benchmark format, VOC-MLT's long tail, visible classes, determinism."""
import hashlib
import json
import threading
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from tailclip.data import class_groups, ensure_synthetic, read_captions, read_class_names, read_split, synthetic


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    return synthetic.generate(tmp_path_factory.mktemp("synthetic"), seed=0)


def _read(root):
    names = read_class_names(root / "synthetic_labels.txt")
    train = read_split(root / "synthetic_lt_train.txt", len(names))
    test = read_split(root / "synthetic_lt_test.txt", len(names))
    captions = read_captions(root / "synthetic_lt_captions.txt", [entry.path for entry in train])
    return names, train, test, captions


def test_voc_mlt_profile_and_groups(generated, shared_data):
    voc = json.loads((shared_data / "voc_mlt" / "class_split.json").read_text())
    names, train, test, captions = _read(generated)
    assert names[:2] == ["red circle", "green square"] and len(names) == 20
    assert len(train) == 1142 and len(test) == 1500
    counts = Counter(label for entry in train for label in entry.labels)
    assert [counts[c] for c in range(20)] == voc["train_class_freq"]
    groups = class_groups([entry.labels for entry in train], 20)
    assert [len(groups[key]) for key in ("head", "medium", "tail")] == [6, 6, 8]
    assert groups == {key: voc[key] for key in ("head", "medium", "tail")}
    assert all(1 <= len(entry.labels) <= 4 for entry in train + test)
    test_counts = Counter(label for entry in test for label in entry.labels)
    assert min(test_counts[c] for c in range(20)) >= 20
    one = next(entry for entry in train if len(entry.labels) == 1)
    three = next(entry for entry in train if len(entry.labels) == 3)
    assert captions[one.path] == f"a noisy picture with a {names[one.labels[0]]}"
    first, second, third = (names[label] for label in three.labels)
    assert captions[three.path] == f"a noisy picture with a {first}, a {second} and a {third}"


def test_objects_are_visible(generated):
    """Each single-object test image holds a patch of its class colour, which noise never reaches."""
    names, _, test, _ = _read(generated)
    singles = [entry for entry in test if len(entry.labels) == 1][:40]
    assert len(singles) == 40
    for entry in singles:
        pixels = np.asarray(Image.open(generated / "images" / entry.path)).astype(float)
        assert pixels.shape == (64, 64, 3)
        distance = {colour: np.linalg.norm(pixels - rgb, axis=-1) for colour, rgb in synthetic.COLOURS.items()}
        colour = names[entry.labels[0]].split()[0]
        own = (distance[colour] < 40).sum()
        assert own >= 150  # a 24 px triangle covers about 290 pixels
        # JPEG blurs an object's edge into the background, so along it a neighbouring colour
        # (blue into navy) shows on a few pixels; the noise alone never reaches a class colour.
        assert all((d < 40).sum() < own / 4 for other, d in distance.items() if other != colour)


def test_every_class_has_a_colour_of_its_own_far_from_the_others_and_the_background():
    """What lets a tiny model learn the classes within the demo's few epochs."""
    colours = [name.split()[0] for name in synthetic.CLASS_NAMES]
    assert len(set(colours)) == len(colours) == 20
    rgb = np.array([synthetic.COLOURS[colour] for colour in colours], dtype=float)
    distances = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    assert distances[~np.eye(20, dtype=bool)].min() >= 127  # half the channel range
    # The background noise is 60..159 per channel: every colour has a channel outside that.
    assert all(((value < 60) | (value > 159)).any() for value in rgb)
    assert {name.split()[1] for name in synthetic.CLASS_NAMES} == set(synthetic.SHAPES)


def _digest(root):
    files = sorted(path for path in root.rglob("*") if path.is_file())
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


def test_same_seed_same_bytes(generated, tmp_path):
    again = _digest(synthetic.generate(tmp_path / "again", seed=0))
    assert len(again) == 1142 + 1500 + 5
    assert again == _digest(generated)


def test_other_seed_other_data(generated, tmp_path, monkeypatch):
    monkeypatch.setattr(synthetic, "NUM_TEST_IMAGES", 10)  # keep it quick; train is unchanged
    other = _digest(synthetic.generate(tmp_path / "other", seed=1))
    assert other["synthetic_lt_train.txt"] != _digest(generated)["synthetic_lt_train.txt"]


def _fake_generate(calls):
    def generate(root, seed, image_size):
        calls.append(seed)
        root.mkdir(exist_ok=True)
        (root / synthetic.MARKER).write_text(json.dumps(synthetic._marker(seed, image_size)))
    return generate


def test_ensure_generates_once_and_replaces_stale_data(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(synthetic, "generate", _fake_generate(calls))
    root = tmp_path / "synthetic_mlt"
    root.mkdir()
    (root / "half_written.jpg").write_bytes(b"")  # an old folder without the marker: stale
    assert ensure_synthetic(root, seed=0) == root
    assert calls == [0] and not (root / "half_written.jpg").exists()
    ensure_synthetic(root, seed=0)
    assert calls == [0]  # already there
    ensure_synthetic(root, seed=2)
    assert calls == [0, 2]
    assert [path.name for path in tmp_path.iterdir()] == ["synthetic_mlt"]  # no staging folders left


def test_processes_ensuring_at_once_generate_once(tmp_path, monkeypatch):
    # Two callers at once (as two test workers, or a node's processes, on a fresh clone): the
    # second waits for the first's dataset instead of generating its own and renaming the
    # first's away while it may be read.
    calls, generate, started = [], _fake_generate([]), threading.Barrier(2)

    def slow_generate(root, seed, image_size):
        calls.append(seed)
        time.sleep(0.5)
        generate(root, seed, image_size)

    monkeypatch.setattr(synthetic, "generate", slow_generate)
    root = tmp_path / "synthetic_mlt"
    callers = [threading.Thread(target=lambda: (started.wait(), ensure_synthetic(root))) for _ in range(2)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert calls == [0]
    assert [path.name for path in tmp_path.iterdir()] == ["synthetic_mlt"]


def test_ensure_leaves_nothing_when_generation_fails(tmp_path, monkeypatch):
    def broken(root, seed, image_size):
        (root / "partial.jpg").write_bytes(b"")
        raise OSError("disk full")
    monkeypatch.setattr(synthetic, "generate", broken)
    with pytest.raises(OSError, match="disk full"):
        ensure_synthetic(tmp_path / "synthetic_mlt")
    assert list(tmp_path.iterdir()) == []
