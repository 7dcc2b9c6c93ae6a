"""Checkpoint files (atomic writes, clear load errors, RNG states) and the run logger."""
import json
import os
import random

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tailclip.engine import checkpoint as ckpt
from tailclip.engine import files
from tailclip.engine.logger import RunLogger, read_metrics
from tailclip.errors import TailCLIPError


def _checkpoint(value: float) -> dict:
    return ckpt.with_checksum({"format": ckpt.FORMAT, "version": ckpt.VERSION,
                               "model": {"w": torch.full((4,), value)}})


def test_save_atomic_round_trip_leaves_no_temporary_file(tmp_path):
    path = ckpt.save_atomic(_checkpoint(1.0), tmp_path / "sub" / "a.pt")
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(4))
    assert [p.name for p in path.parent.iterdir()] == ["a.pt"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_during_write_keeps_the_old_checkpoint(tmp_path, monkeypatch, failure):
    path = ckpt.save_atomic(_checkpoint(1.0), tmp_path / "best.pt")
    old_bytes = path.read_bytes()

    def save_half_then_fail(obj, f):
        f.write(old_bytes[: len(old_bytes) // 2])  # a partial file exists when the failure hits
        raise failure

    monkeypatch.setattr(ckpt.torch, "save", save_half_then_fail)
    with pytest.raises(type(failure)):
        ckpt.save_atomic(_checkpoint(2.0), path)
    assert path.read_bytes() == old_bytes
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(4))
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]


def test_failed_rename_removes_the_temporary_file(tmp_path, monkeypatch):
    path = ckpt.save_atomic(_checkpoint(1.0), tmp_path / "best.pt")

    def fail_replace(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(files.os, "replace", fail_replace)
    with pytest.raises(OSError, match="rename failed"):
        ckpt.save_atomic(_checkpoint(2.0), path)
    assert [p.name for p in tmp_path.iterdir()] == ["best.pt"]
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], torch.ones(4))


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        ckpt.load_checkpoint(tmp_path / "nope.pt")

    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint at all\n")
    with pytest.raises(ckpt.CheckpointError, match="text.pt is not a TailCLIP checkpoint"):
        ckpt.load_checkpoint(text)

    plain = tmp_path / "plain.pt"
    torch.save({"w": torch.zeros(2)}, plain)  # a bare state dict, e.g. from another project
    with pytest.raises(ckpt.CheckpointError, match="plain.pt is not a TailCLIP checkpoint"):
        ckpt.load_checkpoint(plain)

    truncated = tmp_path / "truncated.pt"
    full = ckpt.save_atomic(_checkpoint(1.0), tmp_path / "full.pt").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    with pytest.raises(ckpt.CheckpointError, match="truncated.pt"):
        ckpt.load_checkpoint(truncated)

    newer = ckpt.save_atomic(ckpt.with_checksum({**_checkpoint(1.0), "version": ckpt.VERSION + 1}),
                             tmp_path / "new.pt")
    with pytest.raises(ckpt.CheckpointError, match="newer than this code"):
        ckpt.load_checkpoint(newer)


def test_flipped_bytes_in_a_tensor_are_an_error_naming_the_file(tmp_path):
    weights = torch.arange(4096, dtype=torch.float32)
    path = ckpt.save_atomic(ckpt.with_checksum({**_checkpoint(1.0), "model": {"w": weights},
                                                "state": {"epoch": 3}}), tmp_path / "best.pt")
    data = bytearray(path.read_bytes())
    start = data.find(weights.numpy().tobytes())  # torch.save stores tensor bytes as they are
    assert start > 0
    for offset in range(start + 1000, start + 1016):  # 16 flipped bytes inside the tensor
        data[offset] ^= 0xFF
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(bytes(data))
    assert torch.load(damaged, weights_only=True)["state"] == {"epoch": 3}  # torch itself does not notice
    with pytest.raises(ckpt.CheckpointError, match=f"{damaged} is damaged: its contents do not match"):
        ckpt.load_checkpoint(damaged)
    assert torch.equal(ckpt.load_checkpoint(path)["model"]["w"], weights)


def test_checksum_covers_values_besides_tensors():
    checkpoint = _checkpoint(1.0)
    for changed in ({"state": {"epoch": 2}}, {"model": {"w": torch.ones(4, dtype=torch.float64)}},
                    {"model": {"w": torch.ones(2, 2)}}, {"config": [1, 2]}):
        assert ckpt.content_checksum({**checkpoint, **changed}) != checkpoint["checksum"]
    assert ckpt.content_checksum(checkpoint) == checkpoint["checksum"]


def _draw() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist()


def test_rng_states_survive_a_checkpoint_file(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    path = ckpt.save_atomic(ckpt.with_checksum({**_checkpoint(0.0), "rng": ckpt.rng_states()}),
                            tmp_path / "c.pt")
    expected = _draw()
    _draw()  # move every generator on
    ckpt.restore_rng_states(ckpt.load_checkpoint(path)["rng"])
    assert _draw() == expected


def _scalars(run_dir) -> dict:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_logger_writes_jsonl_tensorboard_and_config(tmp_path):
    logger = RunLogger(tmp_path, run_id="run-a")
    logger.log_config({"lr": 1e-6, "model_name": "ViT-tiny"})
    logger.log_epoch(1, {"train/loss": 2.0, "val/mAP": 0.375, "val/AUROC": 0.75, "note": "text",
                         "val/nan": float("nan")})
    logger.log_epoch(2, {"train/loss": 1.5, "val/mAP": 0.5, "best/val_mAP_tail": 0.25})
    logger.close()

    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 1e-6, "model_name": "ViT-tiny",
                                                                  "run_id": "run-a"}
    # The file holds fractions and says so; TensorBoard shows mAP and AUROC in percent.
    records = read_metrics(tmp_path)
    assert records[0] == {"epoch": 1, "run_id": "run-a", "mAP_unit": "fraction", "train/loss": 2.0,
                          "val/mAP": 0.375, "val/AUROC": 0.75, "note": "text", "val/nan": None}
    assert logger.records == records  # what the checkpoints save
    assert [r["val/mAP"] for r in records] == [0.375, 0.5]
    scalars = _scalars(tmp_path)
    assert scalars["val/mAP"] == [(1, 37.5), (2, 50.0)]
    assert scalars["val/AUROC"] == [(1, 75.0)] and scalars["best/val_mAP_tail"] == [(2, 25.0)]
    assert scalars["train/loss"] == [(1, 2.0), (2, 1.5)]
    assert "note" not in scalars and "mAP_unit" not in scalars


def test_resumed_logger_drops_records_after_the_checkpoint(tmp_path):
    logger = RunLogger(tmp_path, run_id="r")
    for epoch in (1, 2, 3):
        logger.log_epoch(epoch, {"val/loss": float(epoch)})
    logger.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "val/m')  # a line cut short by kill -9

    # The last checkpoint was after epoch 2: it holds the records of epochs 1 and 2.
    logger = RunLogger(tmp_path, run_id="r", records=logger.records[:2], resume_epoch=2)
    logger.log_epoch(3, {"val/loss": 30.0})
    logger.close()
    assert [(r["epoch"], r["val/loss"]) for r in read_metrics(tmp_path)] == [(1, 1.0), (2, 2.0), (3, 30.0)]
    assert _scalars(tmp_path)["val/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0)]


def test_torn_last_line_is_left_out_and_the_rewrite_on_resume_is_atomic(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"epoch": 1, "val/mAP": 0.5}\n{"epoch": 2, "val/mAP": 0.6}\n{"epoch": 3, "val/m')
    assert read_metrics(tmp_path) == [{"epoch": 1, "val/mAP": 0.5}, {"epoch": 2, "val/mAP": 0.6}]
    before = metrics.read_bytes()

    def killed_while_writing(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed_while_writing)  # during the rewrite, before its rename
    with pytest.raises(KeyboardInterrupt):
        RunLogger(tmp_path, resume_epoch=1)  # a checkpoint without records: the file's are kept
    monkeypatch.undo()
    assert metrics.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]
    (tmp_path / ".metrics.jsonl.999.tmp").write_text("{")  # a rewrite killed before its rename
    assert files.remove_partial_writes(tmp_path) == [tmp_path / ".metrics.jsonl.999.tmp"]
    RunLogger(tmp_path, resume_epoch=1).close()
    assert len(read_metrics(tmp_path)) == 1
    metrics.write_text('{"epoch": 1}\nnot json\n{"epoch": 2}\n')  # damage before the last line: named
    with pytest.raises(TailCLIPError, match=f"{metrics}:2: not a JSON record"):
        read_metrics(tmp_path)


def test_disabled_logger_writes_nothing(tmp_path):
    # (An earlier run's logs are deleted by --overwrite before a logger exists:
    # test_run_folder.)
    quiet = RunLogger(tmp_path / "rank1", enabled=False)
    quiet.log_config({"a": 1})
    quiet.log_epoch(1, {"val/mAP": 1.0})
    quiet.close()
    assert not (tmp_path / "rank1").exists()
