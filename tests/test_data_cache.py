"""The decoded-image cache returns exactly the uncached pixels, and is rebuilt when it must be."""
import errno
import os
import pickle
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from tailclip.data import UnreadableImageError
from tailclip.engine import cache
from tailclip.engine.cache import CachedImages, CachedMultiLabelDataset, to_model_input

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_jpeg(path, seed, size=(50, 37), mode="RGB"):
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path, quality=90)
    return path


@pytest.fixture
def images(tmp_path):
    """Four JPEGs of different sizes and aspect ratios, one of them greyscale."""
    folder = tmp_path / "images"
    folder.mkdir()
    sizes = [(50, 37), (37, 50), (64, 64), (23, 41)]
    paths = [write_jpeg(folder / f"{i}.jpg", i, s) for i, s in enumerate(sizes)]
    paths.append(write_jpeg(folder / "grey.jpg", 9, (30, 20), mode="L"))
    return paths


def open_cache(paths, size, tmp_path, **kwargs):
    return CachedImages(paths, size, tmp_path / ".cache", "train", num_threads=2, progress=False, **kwargs)


def pil_resized(path, size):
    """Independent truth: Pillow's own bilinear resize (antialiased) of the RGB image."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))


def test_cached_pixels_equal_uncached_resize(images, tmp_path):
    cached = open_cache(images, 16, tmp_path)
    batch = cached[list(range(len(images)))]
    assert batch.dtype == torch.uint8 and batch.shape == (len(images), 16, 16, 3)
    for i, path in enumerate(images):
        np.testing.assert_array_equal(batch[i].numpy(), pil_resized(path, 16))
    np.testing.assert_array_equal(cached[2].numpy(), pil_resized(images[2], 16))
    np.testing.assert_array_equal(cached[1:3].numpy(), batch[1:3].numpy())


@pytest.mark.parametrize("normalize", ["imagenet", "clip"])
def test_model_input_equals_build_transform(images, tmp_path, normalize):
    from tailclip.data.transforms import MEANS_STDS, build_transform

    mean, std = MEANS_STDS[normalize]
    cached = open_cache(images, 24, tmp_path)
    x = to_model_input(cached[list(range(len(images)))], mean, std)
    transform = build_transform(24, train=False, normalize=normalize)
    for i, path in enumerate(images):
        with Image.open(path) as image:
            expected = transform(image.convert("RGB"))
        assert x[i].shape == expected.shape == (3, 24, 24)
        assert (x[i] - expected).abs().max() <= 1e-6


def test_model_input_flip_per_sample_from_generator():
    images = torch.randint(0, 256, (64, 5, 7, 3), dtype=torch.uint8)
    plain = to_model_input(images, IMAGENET_MEAN, IMAGENET_STD)
    # Hand-computed: ToTensor then Normalize on one pixel.
    expected = (images[3, 2, 4, 1].item() / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert plain[3, 1, 2, 4].item() == pytest.approx(expected, abs=1e-6)

    flipped = to_model_input(images, IMAGENET_MEAN, IMAGENET_STD, flip=True,
                             generator=torch.Generator().manual_seed(5))
    mirrored = torch.rand(64, generator=torch.Generator().manual_seed(5)) < 0.5
    assert 0 < mirrored.sum() < 64
    for i in range(64):
        torch.testing.assert_close(flipped[i], plain[i].flip(-1) if mirrored[i] else plain[i],
                                   rtol=0, atol=0)


def test_model_input_rejects_non_uint8_hwc():
    with pytest.raises(ValueError, match="uint8"):
        to_model_input(torch.zeros(2, 3, 8, 8), IMAGENET_MEAN, IMAGENET_STD)


def test_reused_when_unchanged(images, tmp_path, monkeypatch):
    first = open_cache(images, 16, tmp_path)

    def no_decoding(path, size):
        raise AssertionError(f"cache rebuilt although nothing changed ({path})")

    monkeypatch.setattr(cache, "decode_resized", no_decoding)
    again = open_cache(images, 16, tmp_path)
    assert again.file == first.file
    np.testing.assert_array_equal(again.array, first.array)


def test_rebuilt_when_a_source_file_changes(images, tmp_path):
    before = open_cache(images, 16, tmp_path)[2].clone()
    write_jpeg(images[2], seed=100, size=(64, 64))
    stat = images[2].stat()
    os.utime(images[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    after = open_cache(images, 16, tmp_path)
    assert not torch.equal(after[2], before)
    np.testing.assert_array_equal(after[2].numpy(), pil_resized(images[2], 16))


def test_rebuilt_when_the_cache_file_is_truncated(images, tmp_path):
    cached = open_cache(images, 16, tmp_path)
    data = cached.file.read_bytes()
    cached.file.write_bytes(data[: len(data) // 2])
    rebuilt = open_cache(images, 16, tmp_path)
    np.testing.assert_array_equal(rebuilt[0].numpy(), pil_resized(images[0], 16))


def test_different_sizes_never_share_a_cache(images, tmp_path):
    small = open_cache(images, 8, tmp_path)
    large = open_cache(images, 12, tmp_path)
    assert small.file != large.file and small.key != large.key
    assert small.file.exists() and large.file.exists()
    assert small[[0]].shape == (1, 8, 8, 3) and large[[0]].shape == (1, 12, 12, 3)
    np.testing.assert_array_equal(open_cache(images, 8, tmp_path)[0].numpy(), pil_resized(images[0], 8))


@pytest.mark.parametrize("corruption", ["garbage", "truncated", "missing"])
def test_corrupt_source_raises_naming_the_file(images, tmp_path, corruption):
    data = images[3].read_bytes()
    if corruption == "missing":
        images[3].unlink()
    else:
        images[3].write_bytes(b"not a jpeg" * 20 if corruption == "garbage" else data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match=str(images[3])):
        open_cache(images, 16, tmp_path)
    assert not any((tmp_path / ".cache").iterdir()), "a failed build left files behind"


def test_source_corrupted_after_caching_is_reported(images, tmp_path):
    open_cache(images, 16, tmp_path)
    images[1].write_bytes(b"broken")
    with pytest.raises(UnreadableImageError, match=str(images[1])):
        open_cache(images, 16, tmp_path)


def test_pickles_without_the_pixels(images, tmp_path):
    cached = open_cache(images, 32, tmp_path)
    copy = pickle.loads(pickle.dumps(cached))
    assert len(pickle.dumps(cached)) < cached.array.nbytes
    np.testing.assert_array_equal(copy.array, cached.array)


def test_dataset_batches_through_a_dataloader(images, tmp_path):
    cached = open_cache(images, 16, tmp_path)
    targets = torch.eye(len(images))
    tokens = torch.arange(len(images) * 3).view(len(images), 3)
    dataset = CachedMultiLabelDataset(cached, targets, tokens)
    loader = DataLoader(dataset, sampler=BatchSampler(SequentialSampler(dataset), 2, drop_last=False),
                        batch_size=None)
    batches = list(loader)
    assert [len(b[3]) for b in batches] == [2, 2, 1]
    for images_uint8, target, token, index in batches:
        torch.testing.assert_close(images_uint8, cached[index], rtol=0, atol=0)
        torch.testing.assert_close(target, targets[index])
        torch.testing.assert_close(token, tokens[index])
    with pytest.raises(ValueError, match="length mismatch"):
        CachedMultiLabelDataset(cached, targets[:2], tokens)


def test_full_disk_is_one_line_naming_the_folder_and_the_space(images, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(cache.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(cache.CacheWriteError) as caught:
        open_cache(images, 16, tmp_path)
    needed = len(images) * 16 * 16 * 3
    assert str(caught.value) == (f"no space left for the image cache in {tmp_path / '.cache'}: the train "
                                 f"split needs {needed / 1e6:.1f} MB, 0.0 MB free; free some space, "
                                 "or set image_cache = False")
    assert not list((tmp_path / ".cache").iterdir())


def test_no_space_for_the_blocks_is_the_same_error(images, tmp_path, monkeypatch):
    def no_space(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(cache.os, "posix_fallocate", no_space)
    with pytest.raises(cache.CacheWriteError, match="no space left for the image cache in"):
        open_cache(images, 16, tmp_path)
    assert not list((tmp_path / ".cache").iterdir())


# Builds a cache under a file-size limit below its size: the kernel refuses the blocks with
# EFBIG (SIGXFSZ ignored), as a full disk refuses them with ENOSPC; memory-mapped writes into a
# sparse file would instead die of SIGBUS.
CACHE_UNDER_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (2000, 2000))
from tailclip.engine.cache import CachedImages, CacheWriteError
try:
    CachedImages(sys.argv[2:], 64, Path(sys.argv[1]), "train", progress=False)
except CacheWriteError as error:
    print(error)
"""


def test_file_size_limit_gives_the_error_not_a_bus_error(images, tmp_path):
    folder = tmp_path / ".cache"
    result = subprocess.run([sys.executable, "-c", CACHE_UNDER_FILE_SIZE_LIMIT, str(folder), *map(str, images)],
                            cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"no space left for the image cache in {folder}: the train split needs")
    assert not list(folder.iterdir())


def test_stale_temporary_files_are_removed_and_live_ones_kept(images, tmp_path):
    folder = tmp_path / ".cache"
    folder.mkdir()
    host = socket.gethostname()
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale = folder / f"train_0123.npy.{host}.{dead.pid}.tmp"
    live = folder / f"train_0123.npy.{host}.1.tmp"  # pid 1 always runs
    other_host = folder / f"train_0123.npy.elsewhere.{dead.pid}.tmp"
    for path in (stale, live, other_host):
        path.write_bytes(b"x" * 100)
    open_cache(images, 16, tmp_path)
    assert not stale.exists() and live.exists() and other_host.exists()


def test_damaged_cache_is_detected_and_rebuilt(images, tmp_path, caplog):
    first = open_cache(images, 16, tmp_path)
    expected = first[list(range(len(images)))].numpy()
    data = bytearray(first.file.read_bytes())
    for offset in range(len(data) - 300, len(data) - 200):
        data[offset] ^= 0x5A
    del first
    file = next((tmp_path / ".cache").glob("*.npy"))
    file.write_bytes(bytes(data))
    reopened = open_cache(images, 16, tmp_path)
    assert "is damaged" in caplog.text
    np.testing.assert_array_equal(reopened[list(range(len(images)))].numpy(), expected)
