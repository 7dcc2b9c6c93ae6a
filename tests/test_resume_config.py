"""A resumed run trains as its files say: with its own saved config, changed only by the
options given now, each of which either takes effect exactly as ``config.json`` records it
or is refused at start-up (demo config, CPU, a few short epochs)."""
import json
import math

import pytest

from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.tools.sweep import Setting, run_grid

NEWEST = "newest_train_checkpoint.pt"


def args(runs, *extra):
    # Batch 128 and the BAL term alone keep an epoch to a few seconds (as test_resume).
    return ["--config=configs/demo.py", "--set", "batch_size=128", "--set", "loss_function=['bal']",
            "--set", f"run_dir={runs}", "--run-name=run", *extra]


def cosine(lr, epoch, epochs):
    return lr * (1 + math.cos(math.pi * epoch / epochs)) / 2


def logged_lrs(run_dir):
    return [record["lr"] for record in read_metrics(run_dir) if record["epoch"] > 0]


def saved_config(run_dir):
    return json.loads((run_dir / "config.json").read_text())


def test_extended_run_follows_the_cosine_of_its_new_length(train_main, tmp_path):
    run_dir = tmp_path / "run"
    assert train_main(args(tmp_path, "--set", "epochs=2")) == 0
    assert train_main(args(tmp_path, "--set", "epochs=4", "--resume")) == 0
    lrs = logged_lrs(run_dir)
    # epochs 1-2 as trained (2-epoch cosine), then the 4-epoch cosine from the epoch reached
    expected = [cosine(5e-4, 0, 2), cosine(5e-4, 1, 2), cosine(5e-4, 2, 4), cosine(5e-4, 3, 4)]
    assert lrs == pytest.approx(expected, rel=1e-12)
    assert min(lrs) > 0
    assert saved_config(run_dir)["epochs"] == 4
    assert load_checkpoint(run_dir / NEWEST)["config"]["epochs"] == 4


def test_resume_keeps_the_runs_own_config_and_applies_a_new_lr(train_main, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_main(args(tmp_path, "--set", "epochs=1", "--set", "lr=1e-3")) == 0
    # Not repeating the flags: the run's own epochs (1, not the config file's 8)...
    capsys.readouterr()
    assert train_main(args(tmp_path, "--resume")) == 0
    assert f"{run_dir} is complete: 1 of 1 epochs; nothing to do" in capsys.readouterr().out
    # ... and lr: the run's 1e-3, until a new lr is given, which takes effect at once.
    assert train_main(args(tmp_path, "--set", "epochs=2", "--resume")) == 0
    assert train_main(args(tmp_path, "--set", "epochs=3", "--set", "lr=2e-3", "--resume")) == 0
    assert logged_lrs(run_dir) == pytest.approx([1e-3, cosine(1e-3, 1, 2), cosine(2e-3, 2, 3)], rel=1e-12)
    assert (saved_config(run_dir)["lr"], saved_config(run_dir)["epochs"]) == (2e-3, 3)
    assert "resume: lr = 0.002 from now on (the run had 0.001)" in capsys.readouterr().out


def test_options_that_cannot_change_during_a_run_are_refused(train_main, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert train_main(args(tmp_path, "--set", "epochs=1")) == 0
    before = {path.name: path.stat().st_mtime_ns for path in run_dir.iterdir()}
    for override in ["batch_size=64", "loss_function=['asl']", "model_name=ViT-B/16", "seed=3",
                     "dataset=voc_mlt", "optimizer=SGD"]:
        capsys.readouterr()
        assert train_main(args(tmp_path, "--set", "epochs=2", "--set", override, "--resume")) == 1
        error = capsys.readouterr().err.strip()
        key = override.partition("=")[0]
        assert "\n" not in error and f"with {key} = " in error, error
        assert f"{key} cannot change during a run" in error
    assert {path.name: path.stat().st_mtime_ns for path in run_dir.iterdir()} == before


def test_a_sweep_run_again_with_more_epochs_extends_its_runs(tiny_config, tmp_path):
    settings = [Setting("plain", ())]
    assert run_grid(tiny_config, ["epochs=1"], settings, [0], "sw", log=lambda line: None) == {"plain_seed0": "trained"}
    assert run_grid(tiny_config, ["epochs=3"], settings, [0], "sw", log=lambda line: None) == {"plain_seed0": "resumed"}
    run_dir = tmp_path / "runs" / "sw" / "plain_seed0"
    assert logged_lrs(run_dir) == pytest.approx([1e-3, cosine(1e-3, 1, 3), cosine(1e-3, 2, 3)], rel=1e-12)
    assert saved_config(run_dir)["epochs"] == 3
