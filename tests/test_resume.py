"""--resume continues a run exactly: after kill -9 between epochs, and after Ctrl-C mid-epoch,
the resumed run logs the same losses and metrics and ends with the same weights as a run
that was never stopped (CPU, demo config, 2 epochs).

These runs decode JPEGs without the image cache, so that the random flips come from the
global torch generator and only an exact restore of the random states gives equal losses
(with the cache, flips are seeded per step: test_engine checks those batches)."""
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tailclip.checkpoint import load_checkpoint
from tailclip.logger import read_metrics
from tailclip.model import TailCLIP

REPO = Path(__file__).resolve().parents[1]
NEWEST = "newest_train_checkpoint.pt"


def train_args(runs: Path, run_name: str, *extra: str) -> list[str]:
    # batch 128: 9 steps per epoch, enough to stop in the middle of one
    return ["--config=configs/demo.py", "--set", "epochs=2", "--set", "batch_size=128",
            "--set", "image_cache=False", "--set", f"run_dir={runs}", f"--run-name={run_name}", *extra]


@pytest.fixture(scope="module")
def train_main():
    """``train.py``'s ``main(argv) -> exit code``, run in this process."""
    return runpy.run_path(str(REPO / "train.py"))["main"]


@pytest.fixture(scope="module")
def straight(train_main, tmp_path_factory):
    """The reference: 2 epochs without a stop."""
    runs = tmp_path_factory.mktemp("runs")
    assert train_main(train_args(runs, "straight")) == 0
    return runs / "straight"


def assert_same_run(run_dir: Path, reference: Path) -> None:
    """Same logged numbers (timings aside) and bit-identical final weights."""
    def logged(path):
        return [{k: v for k, v in record.items() if not k.startswith("time/")}
                for record in read_metrics(path)]

    assert logged(run_dir) == logged(reference)
    weights = load_checkpoint(run_dir / NEWEST)["model"]
    expected = load_checkpoint(reference / NEWEST)["model"]
    assert weights.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(weights[name], tensor), name


def test_run_killed_between_epochs_resumes_identically(train_main, straight, tmp_path):
    process = subprocess.Popen([sys.executable, "train.py", *train_args(tmp_path, "killed")], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    newest = tmp_path / "killed" / NEWEST
    deadline = time.monotonic() + 240
    while not newest.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)  # during epoch 2
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert load_checkpoint(newest)["state"]["epoch"] == 1
    for name in ("best_valid_mAP.pt", "best_valid_mAP_tail.pt"):  # written before the newest one
        assert load_checkpoint(tmp_path / "killed" / name)["state"]["epoch"] == 1

    assert train_main(train_args(tmp_path, "killed", "--resume")) == 0
    assert_same_run(tmp_path / "killed", straight)


def test_ctrl_c_mid_epoch_saves_and_resumes_identically(train_main, straight, tmp_path, monkeypatch):
    forward = TailCLIP.forward
    calls = []

    def forward_then_ctrl_c(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == 4:  # as a user pressing Ctrl-C during step 4 of epoch 1
            os.kill(os.getpid(), signal.SIGINT)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TailCLIP, "forward", forward_then_ctrl_c)
    assert train_main(train_args(tmp_path, "stopped")) == 130
    monkeypatch.undo()
    saved = load_checkpoint(tmp_path / "stopped" / NEWEST)["state"]
    assert (saved["epoch"], saved["step_in_epoch"], saved["global_step"]) == (0, 4, 4)
    assert not (tmp_path / "stopped" / "metrics.jsonl").exists()  # no epoch finished

    assert train_main(train_args(tmp_path, "stopped", "--resume")) == 0
    assert_same_run(tmp_path / "stopped", straight)


def test_resume_without_checkpoint_is_a_clear_error(train_main, tmp_path, capsys):
    assert train_main(train_args(tmp_path, "nothing-here", "--resume")) == 1
    assert f"cannot resume: no {tmp_path / 'nothing-here' / NEWEST}" in capsys.readouterr().err
