"""The per-step training curves: their own TensorBoard run (``steps/``) on the global step
axis, and a resumed logger that replaces the points an interrupted run wrote after its
checkpoint instead of duplicating them."""
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tailclip.engine.logger import STEPS_DIR, RunLogger, StepCurves


def points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir / STEPS_DIR))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def _outputs(value: float) -> dict:
    return {"loss": torch.tensor(value), "loss_bal": torch.tensor(value / 2), "logits": torch.zeros(2, 3)}


def test_every_n_steps_each_term_and_the_learning_rate(tmp_path):
    with RunLogger(tmp_path) as logger:
        curves = StepCurves(logger, every=2)
        for step in range(1, 8):
            curves.log(step, _outputs(float(step)), lr=0.1)
    assert points(tmp_path, "train_step/loss") == [(2, 2.0), (4, 4.0), (6, 6.0)]
    assert points(tmp_path, "train_step/loss_bal") == [(2, 1.0), (4, 2.0), (6, 3.0)]
    assert points(tmp_path, "train_step/lr") == [(s, pytest.approx(0.1)) for s in (2, 4, 6)]
    off = tmp_path / "off"
    with RunLogger(off) as logger:
        StepCurves(logger, every=0).log(1, _outputs(1.0), lr=0.1)
    assert not (off / STEPS_DIR).exists()


def test_a_resumed_logger_replaces_the_steps_after_the_checkpoint(tmp_path, monkeypatch):
    # An interrupted run logged steps 1-10 after its checkpoint at global step 6 (epoch 1
    # done); the resumed run logs 7-10 again, with other values. The interrupted run was an
    # earlier process: its event files are a minute older (TensorBoard reads a folder's files
    # in name order, the creation second first; within one second and one process the order
    # would hang on a counter compared as text, "10" before "9").
    now = time.time
    with monkeypatch.context() as earlier:
        earlier.setattr(time, "time", lambda: now() - 60)
        logger = RunLogger(tmp_path)
        for step in range(1, 11):
            logger.log_step(step, {"loss": float(step)})
        logger.log_epoch(1, {"train/loss": 1.0})
        logger.close()
    with RunLogger(tmp_path, resume_epoch=1, resume_step=6) as resumed:
        for step in range(7, 11):
            resumed.log_step(step, {"loss": 100.0 + step})
        resumed.log_epoch(2, {"train/loss": 2.0})
    assert points(tmp_path, "train_step/loss") == [(s, float(s)) for s in range(1, 7)] + [
        (s, 100.0 + s) for s in range(7, 11)]
    # The epoch curve keeps its own axis, untouched by the steps'.
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(1, 1.0), (2, 2.0)]
