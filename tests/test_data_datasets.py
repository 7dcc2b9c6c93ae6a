"""Transforms, the multi-label dataset, unreadable and missing images, and build_data."""
import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader

import clip
from tailclip import REPO_ROOT
from tailclip.config import Config
from tailclip.data import (
    MEANS_STDS,
    MultiLabelDataset,
    SplitEntry,
    UnreadableImageError,
    build_data,
    build_transform,
    check_images_exist,
    collate_skip_none,
)
from tailclip.data.datasets import dataset_files


def _image(width, height, seed=0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (height, width, 3), dtype=torch.uint8, generator=generator)
    return Image.fromarray(pixels.numpy())


@pytest.mark.parametrize("normalize", ["imagenet", "clip"])
def test_transform_squashes_and_normalises(normalize):
    image = Image.new("RGB", (40, 20), (100, 150, 200))  # 2:1, resized to a square
    output = build_transform(16, train=False, normalize=normalize)(image)
    assert output.shape == (3, 16, 16) and output.dtype == torch.float32
    mean, std = MEANS_STDS[normalize]
    expected = [(value / 255 - m) / s for value, m, s in zip((100, 150, 200), mean, std)]
    assert torch.allclose(output, torch.tensor(expected).view(3, 1, 1).expand(3, 16, 16), atol=1e-6)


def test_resize_is_pillow_bilinear_with_antialiasing():
    image = _image(50, 30)
    output = build_transform(16, train=False, normalize="imagenet")(image)
    resized = torch.from_numpy(np.array(image.resize((16, 16), Image.BILINEAR))).float()
    mean, std = (torch.tensor(v) for v in MEANS_STDS["imagenet"])
    expected = ((resized / 255 - mean) / std).permute(2, 0, 1)
    assert torch.allclose(output, expected, atol=1e-6)


def test_flip_only_when_training():
    image = _image(8, 8)
    evaluate, train = build_transform(8, False, "imagenet"), build_transform(8, True, "imagenet")
    plain = evaluate(image)
    assert all(torch.equal(evaluate(image), plain) for _ in range(20))
    torch.manual_seed(0)
    outputs = [train(image) for _ in range(40)]
    flipped = sum(torch.equal(output, plain.flip(-1)) for output in outputs)
    assert sum(torch.equal(output, plain) for output in outputs) + flipped == 40
    assert 5 < flipped < 35


def test_unknown_normalisation():
    with pytest.raises(ValueError, match="unknown normalize 'imagent'"):
        build_transform(8, False, "imagent")


@pytest.fixture
def small_split(tmp_path):
    """Three images (one RGB, one greyscale, one 8x5) and their entries."""
    _image(10, 10).save(tmp_path / "a.jpg")
    Image.new("L", (6, 9), 128).save(tmp_path / "b.png")
    _image(8, 5, seed=1).save(tmp_path / "c.jpg")
    return tmp_path, [SplitEntry("a.jpg", (2, 0)), SplitEntry("b.png", ()), SplitEntry("c.jpg", (1,))]


def test_items(small_split):
    root, entries = small_split
    tokens = torch.arange(12).view(3, 4)
    dataset = MultiLabelDataset(root, entries, 3, build_transform(8, False, "clip"), tokens)
    image, target, caption, index = dataset[0]
    assert image.shape == (3, 8, 8) and image.dtype == torch.float32
    assert target.tolist() == [1.0, 0.0, 1.0] and target.dtype == torch.float32
    assert caption.tolist() == [0, 1, 2, 3] and index == 0
    assert dataset[1][0].shape == (3, 8, 8)  # greyscale converted to RGB
    assert dataset.targets.tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]
    assert dataset.label_sets == [(2, 0), (), (1,)] and len(dataset) == 3
    no_captions = MultiLabelDataset(root, entries, 3, build_transform(8, False, "clip"))
    assert no_captions[2][2].shape == (0,)


def _break(root):
    """Truncate one JPEG to half its bytes and replace another by text."""
    data = (root / "a.jpg").read_bytes()
    (root / "a.jpg").write_bytes(data[:len(data) // 2])
    (root / "c.jpg").write_text("not an image")


def test_unreadable_images_are_errors_naming_the_file(small_split):
    root, entries = small_split
    _break(root)
    dataset = MultiLabelDataset(root, entries, 3, build_transform(8, False, "clip"))
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(UnreadableImageError, match=f"cannot read image {root / 'a.jpg'}: (?i:.*truncated)"):
        dataset[0]
    with pytest.raises(UnreadableImageError, match=f"cannot read image {root / 'c.jpg'}"):
        dataset[2]


def test_unreadable_images_skipped_and_counted_across_workers(small_split):
    root, entries = small_split
    _break(root)
    entries = entries * 4  # 12 items: 8 unreadable, 4 readable (b.png)
    dataset = MultiLabelDataset(root, entries, 3, build_transform(8, False, "clip"), skip_unreadable=True)
    loader = DataLoader(dataset, batch_size=3, num_workers=2, collate_fn=collate_skip_none)
    batches = list(loader)
    assert [batch[3].tolist() for batch in batches] == [[1], [4], [7], [10]]
    assert dataset.unreadable.tolist() == [True, False, True] * 4  # a.jpg, b.png, c.jpg
    assert collate_skip_none([None, None]) is None


def test_missing_images_reported(tmp_path):
    entries = [SplitEntry(f"img{i:02d}.jpg", (0,)) for i in range(15)]
    for entry in entries[:3]:
        (tmp_path / entry.path).write_bytes(b"")
    with pytest.raises(FileNotFoundError) as error:
        check_images_exist(tmp_path, entries, "bash get_them.sh")
    message = str(error.value)
    assert message.startswith(f"12 of 15 images listed in the splits are missing under {tmp_path}")
    assert str(tmp_path / "img03.jpg") in message and str(tmp_path / "img12.jpg") in message
    assert "img13.jpg" not in message  # only the first ten
    assert message.endswith("To get them: bash get_them.sh")


@pytest.fixture(scope="module")
def synthetic_config(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return Config(dataset="synthetic_mlt", data_root=str(root), model_name="RN-tiny", size=64, pretrained=False,
                  max_length=16, normalize="clip", class_weights_power=1.0, sample_weights_power=0.5)


@pytest.fixture(scope="module")
def synthetic_bundle(synthetic_config):
    return build_data(synthetic_config)  # generates the data on first use


def test_build_data_synthetic(synthetic_bundle, synthetic_config):
    bundle = synthetic_bundle
    assert len(bundle.class_names) == 20 and bundle.label_prompts[0] == "a photo of a red circle"
    assert [len(bundle.groups[key]) for key in ("head", "medium", "tail")] == [6, 6, 8]
    assert bundle.class_weights.dtype == torch.float32 and bundle.sample_weights.dtype == torch.float64
    counts = bundle.train_targets.sum(0)
    assert torch.allclose(bundle.class_weights, counts.min() / counts)
    assert bundle.sample_weights.shape == (1142,) and bundle.sample_weights.max() == 1.0
    assert bundle.train_targets.shape == (1142, 20) and bundle.test.targets.shape == (1500, 20)
    assert bundle.train.label_sets[0] == bundle.train.entries[0].labels

    image, target, tokens, index = bundle.train[5]
    assert image.shape == (3, 64, 64) and tokens.shape == (16,) and index == 5
    names = [bundle.class_names[label] for label in bundle.train.label_sets[5]]
    assert bundle.train_captions[5] == "a photo of a " + ", ".join(names)
    assert torch.equal(tokens, clip.tokenize(bundle.train_captions[5], context_length=16)[0])
    assert bundle.test[0][2].shape == (16,)
    assert bundle.files.image_root == Path(synthetic_config.data_root) / "synthetic_mlt" / "images"


def test_build_data_dataset_captions(synthetic_bundle, synthetic_config):
    cfg = dataclasses.replace(synthetic_config, use_dataset_train_captions=True)
    bundle = build_data(cfg)
    assert bundle.train_captions[0].startswith("a noisy picture with a ")
    # "a noisy picture with a magenta triangle, ..." is cut to whole words within 16 tokens
    first = clip.get_tokenizer().decode(bundle.train.caption_tokens[0].tolist())
    assert "a noisy picture with" in first


def _custom_config(synthetic_config, folder, train_lines):
    """A custom dataset made of the synthetic test split, class names and images, and these train lines."""
    synthetic = Path(synthetic_config.data_root) / "synthetic_mlt"
    (folder / "train.txt").write_text("".join(line + "\n" for line in train_lines))
    shutil.copy(synthetic / "synthetic_lt_test.txt", folder / "test.txt")
    shutil.copy(synthetic / "synthetic_labels.txt", folder / "names.txt")
    return Config(dataset="custom", train_list=str(folder / "train.txt"), test_list=str(folder / "test.txt"),
                  class_names=str(folder / "names.txt"), image_root=str(synthetic / "images"),
                  model_name="RN-tiny", size=64, pretrained=False)


def test_build_data_custom(synthetic_bundle, synthetic_config, tmp_path):
    train_lines = [" ".join([entry.path, *map(str, entry.labels)]) for entry in synthetic_bundle.train.entries]
    bundle = build_data(_custom_config(synthetic_config, tmp_path, train_lines))
    assert bundle.groups == synthetic_bundle.groups
    assert torch.equal(bundle.sample_weights, build_data(dataclasses.replace(
        synthetic_config, sample_weights_power=1.0)).sample_weights)


def test_custom_class_without_training_image(synthetic_bundle, synthetic_config, tmp_path):
    cfg = _custom_config(synthetic_config, tmp_path, ["train/000000.jpg 0 3", "train/000001.jpg 1"])
    with pytest.raises(ValueError, match=rf"{tmp_path / 'train.txt'}: classes with no training image: \[2, 4,"):
        build_data(cfg)


def test_relative_paths_are_relative_to_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    files = dataset_files(Config(dataset="coco_mlt", model_name="RN-tiny", size=64, pretrained=False))
    assert files.train_list == REPO_ROOT / "datasets" / "coco_mlt" / "coco_lt_train.txt"
    assert files.image_root == REPO_ROOT / "datasets" / "coco_mlt" / "images"
    custom = dataset_files(Config(dataset="custom", train_list="my/train.txt", test_list="/abs/test.txt",
                                  class_names="my/names.txt", image_root="my/images",
                                  model_name="RN-tiny", size=64, pretrained=False))
    assert custom.train_list == REPO_ROOT / "my" / "train.txt" and str(custom.test_list) == "/abs/test.txt"
    assert custom.captions is None


@pytest.mark.parametrize("dataset, prefix, first_image", [
    ("voc_mlt", "voc", "voc_mlt/VOCdevkit/VOC2012/JPEGImages/2008_000023.jpg"),
    ("coco_mlt", "coco", "coco_mlt/images/train2017/000000554625.jpg"),
])
def test_benchmark_without_images(shared_data, tmp_path, dataset, prefix, first_image):
    shutil.copytree(shared_data / dataset, tmp_path / dataset)  # split files only, no images
    cfg = Config(dataset=dataset, data_root=str(tmp_path), model_name="RN-tiny", size=64, pretrained=False)
    with pytest.raises(FileNotFoundError) as error:
        build_data(cfg)
    total = {"voc_mlt": 1142 + 4952, "coco_mlt": 1909 + 5000}[dataset]
    message = str(error.value)
    assert message.startswith(f"{total} of {total} images listed in the splits are missing")
    assert f"\n  {tmp_path / first_image}\n" in message
    assert message.endswith(f"To get them: bash datasets/{dataset}/download_{dataset}.sh")
