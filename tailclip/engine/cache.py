"""Decoded-image cache: decode and resize each split's images once, then read them as uint8.

The uncached path decodes and resizes every JPEG in every epoch, which on a small GPU job
costs more than the model. Here each split is decoded once, exactly as the uncached path
does it (``datasets.load_image``, then ``transforms.Resize(size)``: ``Resize((size, size))``,
bilinear, antialiased, on the PIL RGB image), and stored as one uint8 array
``[N, size, size, 3]`` in a ``.npy`` file that later epochs memory-map. Flip and
normalisation run afterwards on the device, on whole batches.

API
- ``CachedImages(paths, size, cache_dir, name)``: opens (or builds) the cache of one split.
  ``images[indices]`` -> uint8 tensor ``[B, size, size, 3]`` (``[size, size, 3]`` for an int).
- ``to_model_input(images_uint8, mean, std, flip, generator)`` -> float ``[B, 3, H, W]``:
  divide by 255, random horizontal flip per sample (training), normalise. Same arithmetic as
  ``ToTensor`` + ``Normalize``, so cached and uncached inputs agree to the last bit.
- ``CachedMultiLabelDataset(images, targets, caption_tokens)``: a map-style dataset indexed by
  a *list* of indices, returning a whole batch ``(uint8 images, targets, tokens, indices)``.
  Use it with a batch sampler and no automatic collation, so one memmap read serves a batch::

      loader = DataLoader(dataset, sampler=BatchSampler(sampler, batch_size, drop_last),
                          batch_size=None, num_workers=0, pin_memory=True)
      for images, targets, tokens, index in loader:
          x = to_model_input(images.to(device, non_blocking=True), mean, std, flip=True,
                             generator=generator)

Files: ``<cache_dir>/<name>_<key>.npy`` and its sidecar ``<name>_<key>.json``. The key hashes
the ordered image paths (the part of the split file that decides the pixels), the size, the
resize method, the Pillow version and ``CACHE_VERSION``, so different sizes never share a
file. The sidecar records each source file's size and mtime; a difference (or a missing or
unreadable cache file) rebuilds the cache, and an image that fails to decode raises
``UnreadableImageError`` naming the file, as the uncached path does. The sidecar also holds
the CRC-32 of the pixels, verified when the cache is opened: damaged bytes rebuild it.
Files are written under a temporary name (``<file>.<host>.<pid>.tmp``) and renamed, so an
interrupted build never leaves a cache that looks valid; the temporary files of processes
that no longer run on this host are removed when a cache is opened. The file's space is
allocated before any pixel is written, so a full disk is a `CacheWriteError` naming the
folder and the space needed (never a bus error from a memory-mapped page without a block).
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import PIL
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from tailclip.data.datasets import load_image
from tailclip.data.transforms import Resize
from tailclip.engine.run_lock import process_runs
from tailclip.errors import TailCLIPError

CACHE_VERSION = "3"  # 2: the sidecar holds the pixels' CRC-32; 3: 16-bit and float images scaled, not clipped
RESIZE_METHOD = "torchvision.Resize(bilinear, antialias=True) on PIL RGB"  # = transforms.Resize

log = logging.getLogger(__name__)


def decode_resized(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode one image as the uncached path does and return it as uint8 ``[size, size, 3]``."""
    return np.asarray(Resize(size)(load_image(path)), dtype=np.uint8)


def _file_stamp(path: Path) -> list[int] | None:
    """(size, mtime in ns) of a source file, None if it cannot be stat-ed."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


class CacheWriteError(TailCLIPError, OSError):
    """The image cache's folder cannot be written (read-only, no such folder, no space)."""


class CachedImages:
    """The decoded, resized images of one split, memory-mapped from ``cache_dir``.

    Opening checks the sidecar against the source files and (re)builds the cache when it is
    missing, stale or unreadable, decoding with ``num_threads`` threads (Pillow releases the
    GIL while decoding and resizing).
    """

    def __init__(self, paths: Sequence[str | os.PathLike], size: int, cache_dir: str | os.PathLike,
                 name: str, num_threads: int | None = None, progress: bool = True):
        if size <= 0:
            raise ValueError(f"image size must be positive, got {size}")
        self.paths = [Path(p) for p in paths]
        self.size = size
        self.name = name
        self.key = self._key()
        cache_dir = Path(cache_dir)
        self.file = cache_dir / f"{name}_{self.key}.npy"
        self.sidecar = cache_dir / f"{name}_{self.key}.json"
        self.num_threads = num_threads or min(8, os.cpu_count() or 1)
        self.progress = progress
        _remove_stale_temporary_files(cache_dir)
        opened = self._open()
        self.array = opened if opened is not None else self._build()

    def _key(self) -> str:
        spec = {"version": CACHE_VERSION, "resize": RESIZE_METHOD, "pillow": PIL.__version__,
                "size": self.size, "paths": [str(p) for p in self.paths]}
        return hashlib.sha256(json.dumps(spec).encode()).hexdigest()[:16]

    def _open(self) -> np.ndarray | None:
        """The memory-mapped array if the cache on disk is complete and current, else None."""
        try:
            meta = json.loads(self.sidecar.read_text())
            array = np.load(self.file, mmap_mode="r")
        except (OSError, ValueError):
            return None
        files = meta.get("files", [])
        if (meta.get("key") != self.key or len(files) != len(self.paths)
                or array.shape != (len(self.paths), self.size, self.size, 3)):
            return None
        for path, recorded in zip(self.paths, files):
            if _file_stamp(path) != recorded[1:]:
                log.info("image cache %s is stale: %s changed", self.file.name, path)
                return None
        if meta.get("crc32") != pixels_crc32(array):
            log.warning("image cache %s is damaged (its pixels do not match their checksum): "
                        "rebuilding it", self.file)
            return None
        return array

    def _build(self) -> np.ndarray:
        stamps: list[list[int] | None] = [None] * len(self.paths)
        temp = _temporary_name(self.file)
        array = self._allocate(temp)

        def fill(i: int, pixels: np.ndarray = array) -> None:
            stamps[i] = _file_stamp(self.paths[i])  # before reading: a later edit is noticed
            pixels[i] = decode_resized(self.paths[i], self.size)

        pool = ThreadPoolExecutor(self.num_threads)
        try:
            futures = [pool.submit(fill, i) for i in range(len(self.paths))]
            bar = tqdm(as_completed(futures), total=len(futures), disable=not self.progress,
                       desc=f"caching {self.name} images at {self.size}px", unit="img")
            for future in bar:
                future.result()
            array.flush()
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        finally:
            pool.shutdown(cancel_futures=True)
            del array, fill  # the memory map closes before the file is renamed
        meta = {"key": self.key, "version": CACHE_VERSION, "resize": RESIZE_METHOD, "size": self.size,
                "files": [[str(p), *s] for p, s in zip(self.paths, stamps)],
                "crc32": pixels_crc32(np.load(temp, mmap_mode="r"))}
        sidecar_temp = _temporary_name(self.sidecar)
        try:
            sidecar_temp.write_text(json.dumps(meta))
        except OSError as error:
            temp.unlink(missing_ok=True)
            sidecar_temp.unlink(missing_ok=True)
            raise self._write_error(sidecar_temp, error, 0) from None
        os.replace(temp, self.file)
        os.replace(sidecar_temp, self.sidecar)
        return np.load(self.file, mmap_mode="r")

    def _allocate(self, temp: Path) -> np.memmap:
        """The temporary cache file, every block of it allocated, memory-mapped for writing."""
        shape = (len(self.paths), self.size, self.size, 3)
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                  "shape": shape}
        needed = int(np.prod(shape))
        try:
            self.file.parent.mkdir(parents=True, exist_ok=True)
            if shutil.disk_usage(self.file.parent).free < needed:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            with open(temp, "wb") as f:
                np.lib.format.write_array_header_1_0(f, header)
                f.flush()
                offset = f.tell()
                _allocate_blocks(f, offset + needed)
            return np.memmap(temp, dtype=np.uint8, mode="r+", offset=offset, shape=shape)
        except OSError as error:
            with contextlib.suppress(OSError):  # none was made where the folder cannot be
                temp.unlink()
            raise self._write_error(temp, error, needed) from None

    def _write_error(self, path: Path, error: OSError, needed: int) -> CacheWriteError:
        if error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            free = shutil.disk_usage(path.parent).free
            return CacheWriteError(
                f"no space left for the image cache in {path.parent}: the {self.name} split needs "
                f"{_megabytes(needed)}, {_megabytes(free)} free; free some space, or set "
                "image_cache = False")
        return CacheWriteError(f"cannot write the image cache {path}: {error.strerror or error}; "
                               "make that folder writable, or set image_cache = False")

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, indices) -> torch.Tensor:
        """uint8 images ``[B, size, size, 3]`` for a list/array/tensor of indices (copied)."""
        if isinstance(indices, torch.Tensor):
            indices = indices.numpy()
        batch = self.array[indices]
        if not batch.flags.writeable:  # a slice or single index is a view of the read-only map
            batch = np.array(batch)
        return torch.from_numpy(batch)

    # A memmap would be pickled by value; DataLoader workers reopen the file instead.
    def __getstate__(self):
        state = self.__dict__.copy()
        state["array"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self.array = np.load(self.file, mmap_mode="r")


def pixels_crc32(array: np.ndarray) -> int:
    """CRC-32 of a cache's pixels (zlib's, which releases the GIL while it reads)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def _allocate_blocks(f, size: int) -> None:
    """Give the open file ``f`` ``size`` bytes of real disk blocks (not a sparse file)."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(f.fileno(), 0, size)
        return
    chunk = bytes(1 << 24)  # where posix_fallocate is missing (macOS): zeros, written
    f.seek(0, os.SEEK_END)
    while f.tell() < size:
        f.write(chunk[:size - f.tell()])
    f.flush()


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.1f} MB"


def _temporary_name(path: Path) -> Path:
    return path.with_name(f"{path.name}.{socket.gethostname()}.{os.getpid()}.tmp")


def _remove_stale_temporary_files(cache_dir: Path) -> None:
    """Delete the temporary files of cache builds whose process no longer runs on this host
    (killed during a build, or stopped by a full disk before it could clean up)."""
    ours = re.compile(rf".*\.{re.escape(socket.gethostname())}\.(\d+)\.tmp")
    for path in cache_dir.glob("*.tmp"):
        match = ours.fullmatch(path.name)
        # This process builds no cache while it opens one: its own id in a name is an earlier process's.
        if match and (int(match.group(1)) == os.getpid() or not process_runs(int(match.group(1)))):
            path.unlink(missing_ok=True)
            log.info("removed %s, left by an image cache build that did not finish", path)


def to_model_input(images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
                   flip: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 ``[B, H, W, 3]`` -> normalised float32 ``[B, 3, H, W]`` (channels-last in memory).

    With ``flip``, each image is mirrored horizontally with probability 1/2, drawn from
    ``generator`` (training only). The arithmetic is ToTensor's ``/ 255`` then Normalize's
    ``(x - mean) / std``, so the result equals the uncached transform bit for bit.
    """
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images [B, H, W, 3], got {images.dtype} {list(images.shape)}")
    if flip:
        device = generator.device if generator is not None else images.device
        mirrored = torch.rand(images.shape[0], generator=generator, device=device) < 0.5
        images = torch.where(_on(images.device, mirrored)[:, None, None, None], images.flip(2), images)
    x = images.permute(0, 3, 1, 2).float().div(255)
    mean = _on(x.device, torch.tensor(mean, dtype=x.dtype).view(1, 3, 1, 1))
    std = _on(x.device, torch.tensor(std, dtype=x.dtype).view(1, 3, 1, 1))
    return x.sub(mean).div(std)


def _on(device: torch.device, small: torch.Tensor) -> torch.Tensor:
    # A copy from pageable host memory to a GPU waits for all the work queued on the device;
    # from pinned memory it is queued like a kernel (the pinned block is kept until it is done).
    if device.type != "cuda":
        return small.to(device)
    return small.pin_memory().to(device, non_blocking=True)


class CachedMultiLabelDataset(Dataset):
    """Batches of ``(uint8 images [B,H,W,3], targets [B,C], caption tokens [B,L], indices [B])``.

    Indexed by a list of indices (one batch from a ``BatchSampler``), so use it with
    ``DataLoader(..., batch_size=None)``. ``targets`` and ``caption_tokens`` are the split's
    tensors in the same order as the images.
    """

    def __init__(self, images: CachedImages, targets: torch.Tensor, caption_tokens: torch.Tensor):
        if not len(images) == len(targets) == len(caption_tokens):
            raise ValueError(f"length mismatch: {len(images)} images, {len(targets)} targets, "
                             f"{len(caption_tokens)} captions")
        self.images = images
        self.targets = targets
        self.caption_tokens = caption_tokens

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, indices):
        index = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
        return self.images[index], self.targets[index], self.caption_tokens[index], index
