"""The cost of the checksums that guard a run's files, on this machine's CPU.

1. Checkpoints: `checkpoint.content_checksum` of a demo training checkpoint (ViT-tiny
   weights, AdamW states, random states), and `load_checkpoint` of it (which verifies the
   checksum) against a bare `torch.load` of the same file (page cache warm).
2. Image cache: `cache.pixels_crc32`, verified each time a cache is opened, on the demo's
   two caches (read from disk through the memory map, page cache warm) and on a VOC-MLT-size
   cache held in memory: 1,142 train + 4,952 test images at 224x224x3 uint8 (random bytes;
   CRC-32 does not depend on the values).

    python bench/bench_checksums.py --checkpoint runs/demo/newest_train_checkpoint.pt \
        --cache datasets/synthetic_mlt/cache
"""
import argparse
import functools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tailclip.engine.cache import pixels_crc32  # noqa: E402
from tailclip.engine.checkpoint import content_checksum, load_checkpoint  # noqa: E402


def best_of(function, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint")
    parser.add_argument("--cache", type=Path, required=True, help="a folder of image caches (*.npy)")
    args = parser.parse_args()

    checkpoint = load_checkpoint(args.checkpoint)
    size = args.checkpoint.stat().st_size / 1e6
    seconds = best_of(lambda: content_checksum(checkpoint))
    plain = best_of(lambda: torch.load(args.checkpoint, map_location="cpu", weights_only=True))
    verified = best_of(lambda: load_checkpoint(args.checkpoint))
    print(f"checkpoint {args.checkpoint.name} ({size:.1f} MB): checksum {1000 * seconds:.0f} ms "
          f"({size / seconds:.0f} MB/s); torch.load {1000 * plain:.0f} ms, load_checkpoint "
          f"(verified) {1000 * verified:.0f} ms")

    for file in sorted(args.cache.glob("*.npy")):
        array = np.load(file, mmap_mode="r")
        seconds = best_of(functools.partial(pixels_crc32, array))
        print(f"cache {file.name} {tuple(array.shape)} ({array.nbytes / 1e6:.1f} MB): CRC-32 "
              f"{1000 * seconds:.1f} ms ({array.nbytes / 1e6 / seconds:.0f} MB/s)")

    voc = np.random.default_rng(0).integers(0, 256, (1142 + 4952, 224, 224, 3), dtype=np.uint8)
    seconds = best_of(lambda: pixels_crc32(voc), repeats=3)
    print(f"VOC-MLT-size cache {tuple(voc.shape)} ({voc.nbytes / 1e9:.2f} GB, in memory): CRC-32 "
          f"{seconds:.2f} s ({voc.nbytes / 1e6 / seconds:.0f} MB/s)")


if __name__ == "__main__":
    main()
