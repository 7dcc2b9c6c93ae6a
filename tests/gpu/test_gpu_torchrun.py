"""train.py and test.py end to end on the demo, on CUDA, under torchrun.

With one process torchrun sets WORLD_SIZE=1 and TailCLIP runs as a single process (no process
group: NCCL refuses two ranks on one GPU); the NCCL paths (the autograd all-gather in its own
group, the host gloo group made in init_distributed, SyncBatchNorm) run with two processes,
which needs two GPUs."""
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def run(command: list[str]) -> str:
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-8000:]
    return result.stdout


@pytest.mark.parametrize("processes", [1, 2])
def test_train_and_test_under_torchrun(processes, tmp_path, record_property):
    if torch.cuda.device_count() < processes:
        pytest.skip(f"{processes} processes need {processes} GPUs, {torch.cuda.device_count()} visible")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    options = ["--config=configs/demo.py", "--set=device=cuda", "--set=epochs=2", "--set=batch_size=32",
               f"--set=run_dir={tmp_path}", "--run-name=demo"]
    started = time.perf_counter()
    printed = run([*torchrun, "train.py", *options])
    record_property("train_seconds", round(time.perf_counter() - started, 1))
    assert printed.count("epoch 2/2") == 1 and "val mAP" in printed
    run([*torchrun, "test.py", *options, "--checkpoint=best_valid_mAP.pt"])
    report = json.loads((tmp_path / "demo" / "test_best_valid_mAP.json").read_text())
    record_property("test_mAP", report["metrics"]["mAP"])
    assert report["num_images"] > 0 and 0 < report["metrics"]["mAP"] <= 1
