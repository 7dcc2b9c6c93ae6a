"""sweep.py --search: an Optuna study in the sweep folder's SQLite file that a second
command continues, a trial interrupted by Ctrl-C retried in its own run folder, pruning
through train()'s per-epoch callback, and the callback itself."""
import json

import optuna  # requirements-dev.txt
import pytest

import tailclip.engine.training
import tailclip.model
from interrupt import ctrl_c_on_forward_call
from tailclip.config import load_config
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.tools.sweep import SweepError, parse_range

COMPLETE, PRUNED, FAIL = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                          optuna.trial.TrialState.FAIL)


def search_args(config, trials: int) -> list[str]:
    return ["--config", str(config), "--name", "st", "--search", str(trials),
            "--range", "lr=1e-4:1e-2:log", "--grid", "use_sample_weights=True,False"]


def load_study(tmp_path):
    return optuna.load_study(study_name="st", storage=f"sqlite:///{tmp_path / 'runs' / 'st' / 'optuna.db'}")


def test_search_study_resumes_from_its_sqlite_file(sweep_main, tiny_config, tmp_path, train_calls):
    assert sweep_main(search_args(tiny_config, 2)) == 0
    trials = load_study(tmp_path).trials
    assert [t.state for t in trials] == [COMPLETE, COMPLETE]
    for trial in trials:
        run = tmp_path / "runs" / "st" / f"trial{trial.number:04d}_seed0"
        assert trial.value == read_metrics(run)[-1]["val/mAP"]  # one seed: the last epoch's test mAP
        config = json.loads((run / "config.json").read_text())
        assert 1e-4 <= trial.params["lr"] <= 1e-2 and config["lr"] == trial.params["lr"]
        assert str(config["use_sample_weights"]) == trial.params["use_sample_weights"]
    assert (tmp_path / "runs" / "st" / "results.md").is_file()

    train_calls.clear()
    assert sweep_main(search_args(tiny_config, 3)) == 0  # one more trial, the first two kept
    again = load_study(tmp_path).trials
    assert [t.state for t in again] == [COMPLETE] * 3
    assert [t.params for t in again[:2]] == [t.params for t in trials]
    assert train_calls == [("trial0002_seed0", False)]


def test_interrupted_trial_is_retried_with_its_parameters_in_its_folder(
        sweep_main, tiny_config, tmp_path, monkeypatch, train_calls):
    forward = ctrl_c_on_forward_call(monkeypatch, 3)  # epoch 2, step 1 of the first trial
    assert sweep_main(search_args(tiny_config, 1)) == 130
    (failed,) = load_study(tmp_path).trials
    assert failed.state == FAIL
    monkeypatch.setattr(tailclip.model.TailCLIP, "forward", forward)
    train_calls.clear()
    assert sweep_main(search_args(tiny_config, 1)) == 0
    retry = load_study(tmp_path).trials[1]
    assert (retry.state, retry.params, retry.user_attrs["run"]) == (COMPLETE, failed.params, "trial0000")
    assert train_calls == [("trial0000_seed0", True)]
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "st" / "trial0000_seed0")] == [0, 1, 2]


def test_pruned_trial_stops_after_the_epoch_it_is_pruned_at(sweep_main, tiny_config, tmp_path, monkeypatch):
    # A pruner that stops every trial whose test mAP is above 0: at the first report.
    monkeypatch.setattr(optuna.pruners, "MedianPruner", lambda: optuna.pruners.ThresholdPruner(upper=0.0))
    assert sweep_main(search_args(tiny_config, 1)) == 0
    (trial,) = load_study(tmp_path).trials
    assert trial.state == PRUNED and list(trial.intermediate_values) == [1]
    run = tmp_path / "runs" / "st" / "trial0000_seed0"
    assert [r["epoch"] for r in read_metrics(run)] == [0, 1]
    assert load_checkpoint(run / "newest_train_checkpoint.pt")["state"]["epoch"] == 1
    assert "No finished runs yet" in (tmp_path / "runs" / "st" / "results.md").read_text()


def test_on_epoch_callback_sees_each_record_and_its_exception_leaves_a_resumable_run(tiny_config, tmp_path):
    cfg = load_config(tiny_config, ["epochs=3"])
    seen = []

    class Stop(Exception):
        pass

    def stop_after_epoch_2(epoch, record):
        seen.append((epoch, record["val/mAP"]))
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        tailclip.engine.training.train(cfg, "hooked", on_epoch=stop_after_epoch_2)
    run = tmp_path / "runs" / "hooked"
    # [0]: the evaluation before training
    assert seen == [(r["epoch"], r["val/mAP"]) for r in read_metrics(run)[1:]] and len(seen) == 2
    assert load_checkpoint(run / "newest_train_checkpoint.pt")["state"]["epoch"] == 2
    tailclip.engine.training.train(cfg, "hooked", resume=True,
                                   on_epoch=lambda epoch, record: seen.append((epoch, None)))
    assert seen[2:] == [(3, None)]


@pytest.mark.parametrize("text, message", [
    ("lr=1e-2:1e-4", "LOW must be below HIGH"),
    ("weight_decay=0:1:log", "LOW > 0"),
    ("lr=0:1", "lr: must be > 0, got 0.0"),  # an end the option refuses, named as given
    ("lr=1e-4", "expected KEY=LOW:HIGH"),
    ("lrr=1:2", "did you mean 'lr'"),
    ("dataset=a:b", "not a number"),
])
def test_bad_ranges_are_refused(text, message):
    with pytest.raises(SweepError, match=message):
        parse_range(text)


def test_integer_ranges_suggest_integers():
    assert parse_range("epochs=1:4").suggest(optuna.trial.FixedTrial({"epochs": 3})) == 3
    assert parse_range("lr=1e-4:1e-2:log").log


def test_trials_are_announced_by_name_and_the_table_rounds_searched_values(
        sweep_main, tiny_config, tmp_path, capsys):
    assert sweep_main(search_args(tiny_config, 1)) == 0
    out = capsys.readouterr().out
    assert "trial0000_seed0: starting" in out and "[1/1]" not in out
    lr = load_study(tmp_path).trials[0].params["lr"]
    table = (tmp_path / "runs" / "st" / "results.md").read_text()
    assert f"| {float(f'{lr:.4g}')} |" in table and repr(lr) not in table


def test_a_continued_search_with_another_range_warns(sweep_main, tiny_config, tmp_path, capsys):
    assert sweep_main(search_args(tiny_config, 0)) == 0  # the study, without a trial
    assert sweep_main(search_args(tiny_config, 0)) == 0
    assert "warning" not in capsys.readouterr().out
    changed = [arg.replace("lr=1e-4:1e-2:log", "lr=1e-3:1e-1:log") for arg in search_args(tiny_config, 0)]
    assert sweep_main(changed) == 0
    assert ("warning: study st continues with another search space (lr: 0.0001:0.01:log -> "
            "0.001:0.1:log)") in capsys.readouterr().out
