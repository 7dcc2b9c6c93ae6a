"""A stop request (Ctrl-C, SIGTERM) is honoured whenever it comes: during the evaluation
before training, during the last epoch's evaluation (the run is then complete, and a sweep
stops before starting another run); an output whose reader has gone (``| head``) costs
no checkpoint. Tiny custom dataset, 2 steps per epoch, CPU."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import tailclip.engine.training
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics

NEWEST = "newest_train_checkpoint.pt"
REPO = Path(__file__).resolve().parents[1]


def ctrl_c_on_evaluation(monkeypatch, call_number: int) -> None:
    """SIGINT to this process during the ``call_number``-th evaluation of the test split
    (1: the one before training)."""
    evaluate, calls = tailclip.engine.training.evaluate_model, []

    def evaluate_then_ctrl_c(*args, **kwargs):
        calls.append(None)
        if len(calls) == call_number:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(tailclip.engine.training, "evaluate_model", evaluate_then_ctrl_c)


def test_ctrl_c_during_the_last_evaluation_stops_the_sweep(sweep_main, tiny_config, tmp_path, monkeypatch,
                                                           capsys, train_calls):
    ctrl_c_on_evaluation(monkeypatch, 3)  # before training, after epoch 1, after epoch 2 (the last)
    args = ["--config", str(tiny_config), "--name", "sw", "--grid", "lr=1e-3,2e-3"]
    assert sweep_main(args) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT during the last epoch" in err and "sweep stopped" in err
    assert train_calls == [("lr=1e-3_seed0", False)]  # the second run never started
    first = tmp_path / "runs" / "sw" / "lr=1e-3_seed0"
    assert [record["epoch"] for record in read_metrics(first)] == [0, 1, 2]
    assert load_checkpoint(first / NEWEST)["state"]["epoch"] == 2


def test_ctrl_c_during_the_evaluation_before_training_saves_and_stops(train_main, tiny_config, tmp_path,
                                                                      monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    ctrl_c_on_evaluation(monkeypatch, 1)
    assert train_main([f"--config={tiny_config}"]) == 130
    monkeypatch.undo()
    assert "stopped by SIGINT after epoch 0" in capsys.readouterr().err
    state = load_checkpoint(run_dir / NEWEST)["state"]
    assert (state["epoch"], state["global_step"]) == (0, 0)
    assert train_main([f"--config={tiny_config}", "--resume"]) == 0
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1, 2]


def test_closed_output_costs_no_checkpoint(tiny_config, tmp_path):
    # `train.py | head`: the reader has gone before the first line.
    process = subprocess.Popen([sys.executable, "train.py", f"--config={tiny_config}", "--set", "epochs=1"],
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait() == 0, err[-3000:]
    assert "Error" not in err
    run_dir = tmp_path / "runs" / "tiny"
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1]
    for name in ("best_valid_mAP.pt", "best_valid_mAP_tail.pt", NEWEST):
        assert load_checkpoint(run_dir / name)["state"]["epoch"] == 1
