"""--resume continues a run exactly: a run killed (kill -9) during epoch 2, resumed, stopped
by Ctrl-C in the middle of epoch 2 and resumed again logs the same losses and metrics and
ends with the same weights as a run that was never stopped (CPU, demo config, 2 epochs).
While it runs, a second training in its folder is refused; its lock, left by the kill, does
not block the resume. A resume after a step whose images were all unreadable starts after
that step.

These runs decode JPEGs without the image cache, so that the random flips come from the
global torch generator and only an exact restore of the random states gives equal losses
(with the cache, flips are seeded per step: test_training checks those batches)."""
import math
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from interrupt import ctrl_c_on_forward_call
from tailclip.data import BalancedSampler
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.engine.run_lock import LOCK_FILE
from tiny_dataset import truncate, write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
NEWEST = "newest_train_checkpoint.pt"


def train_args(runs: Path, run_name: str, *extra: str) -> list[str]:
    # Batch 128: 9 steps per epoch, enough to stop in the middle of one. The BAL term alone
    # (no caption encoding) halves the time; what a resume must restore does not depend on
    # the loss terms (test_train_e2e runs the full objective).
    return ["--config=configs/demo.py", "--set", "epochs=2", "--set", "batch_size=128",
            "--set", "image_cache=False", "--set", "loss_function=['bal']",
            "--set", f"run_dir={runs}", f"--run-name={run_name}", *extra]


@pytest.fixture(scope="module")
def straight(train_main, tmp_path_factory):
    """The reference: 2 epochs without a stop."""
    runs = tmp_path_factory.mktemp("runs")
    assert train_main(train_args(runs, "straight")) == 0
    return runs / "straight"


def step_points(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    """The per-step curve ``tag`` as TensorBoard reads it (a resumed run's purge applied)."""
    events = EventAccumulator(str(run_dir / "steps"))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Same logged numbers (timings, unreadable-image counts and the run's id aside: a
    resumed process counts only the images it met), the same per-step curves, each step once, and
    bit-identical final weights."""
    def logged(path):
        return [{k: v for k, v in record.items() if not k.startswith(("time/", "data/", "run_id"))}
                for record in read_metrics(path)]

    assert logged(run_dir) == logged(reference)
    for tag in ("train_step/loss", "train_step/loss_bal", "train_step/lr"):
        assert step_points(run_dir, tag) == step_points(reference, tag)
    weights = load_checkpoint(run_dir / NEWEST)["model"]
    expected = load_checkpoint(reference / NEWEST)["model"]
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name


def test_killed_then_interrupted_run_resumes_identically(train_main, straight, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "broken"
    # 1. kill -9 during epoch 2, once epoch 1's checkpoints are written
    process = subprocess.Popen([sys.executable, "train.py", *train_args(tmp_path, "broken")], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while not (run_dir / NEWEST).exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # A second training in the folder, by mistake, while the first one runs: refused.
    capsys.readouterr()
    assert train_main(train_args(tmp_path, "broken", "--resume")) == 1
    assert (f"{run_dir} is in use by another training: process {process.pid} on host "
            f"{socket.gethostname()}") in capsys.readouterr().err
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (run_dir / LOCK_FILE).exists()  # left by the killed process
    assert load_checkpoint(run_dir / NEWEST)["state"]["epoch"] == 1
    for name in ("best_valid_mAP.pt", "best_valid_mAP_tail.pt"):  # written before the newest one
        assert load_checkpoint(run_dir / name)["state"]["epoch"] == 1

    # 2. --resume, and Ctrl-C during step 4 of epoch 2: the step finishes, then the run saves
    ctrl_c_on_forward_call(monkeypatch, 4)
    assert train_main(train_args(tmp_path, "broken", "--resume")) == 130
    monkeypatch.undo()
    assert f"removed the stale lock {run_dir / LOCK_FILE} of process {process.pid}" in capsys.readouterr().out
    assert not (run_dir / LOCK_FILE).exists()
    saved = load_checkpoint(run_dir / NEWEST)["state"]
    steps_per_epoch = math.ceil(1142 / 128)
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (1, 4, steps_per_epoch + 4)
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1]

    # 3. --resume again: the same numbers and weights as the run that was never stopped,
    # and a point at every global step, each once (the killed run's later steps purged).
    assert train_main(train_args(tmp_path, "broken", "--resume")) == 0
    assert_same_run(run_dir, straight)
    assert [step for step, _ in step_points(run_dir, "train_step/loss")] == list(range(1, 2 * steps_per_epoch + 1))


def test_resume_without_checkpoint_is_a_clear_error(train_main, tmp_path, capsys):
    assert train_main(train_args(tmp_path, "nothing-here", "--resume")) == 1
    assert f"cannot resume: no {tmp_path / 'nothing-here' / NEWEST}" in capsys.readouterr().err


def test_resume_of_a_run_killed_before_its_first_checkpoint_says_how_to_restart(train_main, tmp_path,
                                                                                capsys):
    run_dir = tmp_path / "early"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text('{"epoch": 0, "mAP_unit": "fraction", "val/mAP": 0.1}\n')
    assert train_main(train_args(tmp_path, "early", "--resume")) == 1
    assert "stopped before its first checkpoint: start the run again with --overwrite" in capsys.readouterr().err
    # Without --resume: the same advice, never "continue it with --resume".
    assert train_main(train_args(tmp_path, "early")) == 1
    error = capsys.readouterr().err
    assert "stopped before its first checkpoint" in error and "start the run again with --overwrite" in error
    assert "--resume" not in error


def test_mid_epoch_resume_with_dataloader_workers_is_exact(train_main, tmp_path, monkeypatch):
    # The JPEG path with 2 worker processes: 16 images in 4 steps of 4; Ctrl-C in step 2.
    root = write_dataset(tmp_path / "data")
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs", batch_size=4, image_cache=False,
                          num_workers=2, loss_function=["bal"])
    assert train_main([f"--config={config}", "--run-name=straight"]) == 0
    ctrl_c_on_forward_call(monkeypatch, 2)
    assert train_main([f"--config={config}", "--run-name=broken"]) == 130
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "runs" / "broken" / NEWEST)["state"]["step_in_epoch"] == 2
    assert train_main([f"--config={config}", "--run-name=broken", "--resume"]) == 0
    assert_same_run(tmp_path / "runs" / "broken", tmp_path / "runs" / "straight")


def test_resume_after_a_step_without_readable_images(train_main, tmp_path, monkeypatch):
    # 16 images in 4 steps of 4 (the tiny dataset, one epoch); every image of step 2 is
    # unreadable, so that step is skipped; Ctrl-C in step 3 (the second forward pass).
    root = write_dataset(tmp_path / "data")
    order = BalancedSampler(None, 16, seed=0, global_batch_size=4).global_indices()
    for index in order[4:8].tolist():
        truncate(root / f"images/train/{index:02d}.jpg")
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs", batch_size=4,
                          use_sample_weights=False, skip_unreadable_images=True,
                          loss_function=["bal"])
    assert train_main([f"--config={config}", "--run-name=straight"]) == 0
    ctrl_c_on_forward_call(monkeypatch, 2)
    assert train_main([f"--config={config}", "--run-name=broken"]) == 130
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "runs" / "broken" / NEWEST)["state"]
    assert (saved["step_in_epoch"], saved["global_step"]) == (3, 3)  # the skipped step counts
    assert train_main([f"--config={config}", "--run-name=broken", "--resume"]) == 0
    assert_same_run(tmp_path / "runs" / "broken", tmp_path / "runs" / "straight")
    # The skipped step has no point; the others keep their global step.
    assert [step for step, _ in step_points(tmp_path / "runs" / "broken", "train_step/loss")] == [1, 3, 4]
