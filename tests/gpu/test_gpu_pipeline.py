"""The batches on CUDA: pinned copies deliver exactly the batches of the plain path (pageable
memory)."""
import dataclasses
from pathlib import Path

import torch

from gpu_models import CUDA
from tailclip.config import load_config
from tailclip.data import build_data
from tailclip.engine.batches import build_split_batches

REPO = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def test_pinned_copies_deliver_the_plain_batches(record_property):
    cfg = dataclasses.replace(load_config(REPO / "configs" / "demo.py"), device="cuda")
    data = build_data(cfg)
    compared = 0
    for train in (True, False):
        on_gpu = build_split_batches(cfg, data, train, CUDA)
        plain = build_split_batches(cfg, data, train, CPU)
        assert on_gpu.loader.pin_memory and not plain.loader.pin_memory
        for epoch, start in ((0, 0), (1, 5)):
            pinned = list(on_gpu.batches(CUDA, epoch, start))
            expected = list(plain.batches(CPU, epoch, start))
            assert len(pinned) == len(expected) > 0
            for got, want in zip(pinned, expected):
                assert got[0].device.type == "cuda"
                for a, b in zip(got, want):
                    assert torch.equal(a.cpu(), b)
                compared += 1
    record_property("batches_compared", compared)
