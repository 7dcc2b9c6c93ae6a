"""Fixtures of the sweep tests: sweep.py's main, a tiny config, and a record of train() calls."""
import runpy
from pathlib import Path

import pytest

import tailclip.engine.training
from tiny_dataset import write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def sweep_main():
    """``sweep.py``'s ``main(argv) -> exit code``, run in this process."""
    return runpy.run_path(str(REPO / "sweep.py"))["main"]


@pytest.fixture
def tiny_config(tmp_path):
    root = write_dataset(tmp_path / "data")
    return write_config(tmp_path / "tiny.py", root, tmp_path / "runs", num_threads=1, epochs=2)


@pytest.fixture
def train_calls(monkeypatch):
    """Every train() call of the sweep, as (run name, resume)."""
    calls, train = [], tailclip.engine.training.train

    def recorded(cfg, run_name, **options):
        calls.append((run_name, options.get("resume", False)))
        return train(cfg, run_name, **options)

    monkeypatch.setattr(tailclip.engine.training, "train", recorded)
    return calls
