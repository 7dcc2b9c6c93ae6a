"""sweep.py: grid and variant expansion, run names, resume of an interrupted sweep, skipping
of finished runs, parallel runs as processes, and a bad --grid key. Runs train a tiny random
CLIP on the tiny custom dataset (16 training images, 2 steps per epoch) on the CPU."""
import json
import sys

import pytest

import tailclip.engine.training
import tailclip.model
from interrupt import ctrl_c_on_forward_call
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.tools.sweep import (
    Setting,
    SweepError,
    expand,
    parse_grid,
    parse_variant,
    plan,
    run_grid,
    run_progress,
    split_top_level,
)

NEWEST = "newest_train_checkpoint.pt"


def test_values_split_outside_brackets_and_quotes():
    assert split_top_level("1e-3, 2e-3") == ["1e-3", "2e-3"]
    assert split_top_level("['clip','bal'],['bal'],'a,b'") == ["['clip','bal']", "['bal']", "'a,b'"]


def test_grid_is_the_cross_product_of_every_variant_and_named_by_its_values(tiny_config, tmp_path):
    grid = [parse_grid("lr=1e-3,2e-3"), parse_grid("loss_function=['clip','bal'],['bal']")]
    variants = [parse_variant("plain:"), parse_variant("nosampler:use_sample_weights=False,asl_mul=2")]
    settings = expand(grid, variants)
    assert [s.name for s in settings] == [
        "plain_lr=1e-3_loss_function=clip+bal", "plain_lr=1e-3_loss_function=bal",
        "plain_lr=2e-3_loss_function=clip+bal", "plain_lr=2e-3_loss_function=bal",
        "nosampler_lr=1e-3_loss_function=clip+bal", "nosampler_lr=1e-3_loss_function=bal",
        "nosampler_lr=2e-3_loss_function=clip+bal", "nosampler_lr=2e-3_loss_function=bal"]
    assert settings[5].overrides == ("use_sample_weights=False", "asl_mul=2", "lr=1e-3", "loss_function=['bal']")
    assert [s.name for s in expand([parse_grid("epochs=1,3")], [])] == ["epochs=1", "epochs=3"]

    runs = plan(tiny_config, [], settings[5:6], [0, 4], tmp_path / "runs" / "sw")
    assert [run.name for run in runs] == ["nosampler_lr=1e-3_loss_function=bal_seed0",
                                          "nosampler_lr=1e-3_loss_function=bal_seed4"]
    cfg = runs[1].cfg
    assert (cfg.lr, cfg.loss_function, cfg.use_sample_weights, cfg.asl_mul, cfg.seed) == (1e-3, ["bal"], False, 2.0, 4)
    assert cfg.run_dir == str(tmp_path / "runs" / "sw")


@pytest.mark.parametrize("grid, variant, message", [
    ("lr=1e-3,1e-3", None, "repeated"),
    ("seed=1,2", None, "use --seeds"),
    ("lr=", None, "empty value"),
    ("lr=1e-3", "v:lr=1e-4", "which --grid sweeps"),
    (None, "bad name:lr=1", "NAME"),
    (None, "v:lr", "not KEY=VALUE"),
])
def test_inconsistent_sweeps_are_refused(grid, variant, message):
    with pytest.raises(SweepError, match=message):
        expand([parse_grid(grid)] if grid else [], [parse_variant(variant)] if variant else [])


def test_bad_grid_key_or_value_fails_before_any_run(sweep_main, tiny_config, tmp_path, capsys, train_calls):
    assert sweep_main(["--config", str(tiny_config), "--name", "bad", "--grid", "lrr=1e-3,2e-3"]) == 1
    assert "lrr: unknown option; did you mean 'lr'?" in capsys.readouterr().err
    # The second value is out of range: the first setting must not have run either.
    assert sweep_main(["--config", str(tiny_config), "--name", "bad", "--grid", "epochs=1,0"]) == 1
    assert "epochs: must be >= 1, got 0" in capsys.readouterr().err
    assert train_calls == [] and not (tmp_path / "runs" / "bad").exists()


def test_interrupted_sweep_resumes_the_interrupted_run_and_skips_finished_ones(
        sweep_main, tiny_config, tmp_path, monkeypatch, train_calls, capsys):
    args = ["--config", str(tiny_config), "--name", "sw", "--grid", "lr=1e-3,2e-3", "--seeds", "0"]
    folder = tmp_path / "runs" / "sw"
    # Two steps per epoch: the first run takes forward calls 1-4; Ctrl-C in the second run's
    # third step (epoch 2, step 1), which then saves its checkpoint and stops the sweep.
    forward = ctrl_c_on_forward_call(monkeypatch, 7)
    assert sweep_main(args) == 130
    assert "run the same command again" in capsys.readouterr().err
    first, second = folder / "lr=1e-3_seed0", folder / "lr=2e-3_seed0"
    assert [r["epoch"] for r in read_metrics(first)] == [0, 1, 2]
    state = load_checkpoint(second / NEWEST)["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    first_metrics, epoch_1 = (first / "metrics.jsonl").read_bytes(), read_metrics(second)[1]
    assert not (folder / "results.md").exists()

    monkeypatch.setattr(tailclip.model.TailCLIP, "forward", forward)
    train_calls.clear()
    assert sweep_main(args) == 0
    assert train_calls == [("lr=2e-3_seed0", True)]  # the finished run is not touched
    assert (first / "metrics.jsonl").read_bytes() == first_metrics
    records = read_metrics(second)
    assert [r["epoch"] for r in records] == [0, 1, 2] and records[1] == epoch_1
    assert (folder / "results.md").is_file()

    train_calls.clear()
    assert sweep_main(args + ["--grid", "epochs=3"]) == 0  # a new setting: only it trains
    assert train_calls == [("lr=1e-3_epochs=3_seed0", False), ("lr=2e-3_epochs=3_seed0", False)]
    assert json.loads((folder / "sweep.json").read_text())["swept"] == ["lr", "epochs"]


def test_run_folder_without_checkpoint_starts_afresh(sweep_main, tiny_config, tmp_path, train_calls):
    stale = tmp_path / "runs" / "sw" / "lr=1e-3_seed0"
    stale.mkdir(parents=True)
    (stale / "metrics.jsonl").write_text('{"epoch": 1, "val/mAP": 0.5}\n')  # killed before its save
    assert sweep_main(["--config", str(tiny_config), "--name", "sw", "--grid", "lr=1e-3"]) == 0
    assert train_calls == [("lr=1e-3_seed0", False)]
    assert [r["epoch"] for r in read_metrics(stale)] == [0, 1, 2]


def test_several_gpus_run_as_processes_at_once(tiny_config, tmp_path, train_calls):
    # Two "GPUs" on the CPU: each run is a train.py process (CUDA_VISIBLE_DEVICES is set, and
    # the CPU config ignores it), both at once.
    messages = []
    settings = expand([parse_grid("lr=1e-3,2e-3")], [])
    outcomes = run_grid(tiny_config, ["epochs=1"], settings, [0], "gpus", gpus=["0", "1"], log=messages.append)
    assert outcomes == {"lr=1e-3_seed0": "trained", "lr=2e-3_seed0": "trained"}
    assert train_calls == []  # not in this process
    assert messages[0].startswith("disk: about ")  # said before the first run starts
    assert [m.split(": ")[1][:20] for m in messages[1:3]] == ["starting on GPU 0 (l", "starting on GPU 1 (l"]
    for run in outcomes:
        assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "gpus" / run)] == [0, 1]
        assert "val mAP: start" in (tmp_path / "runs" / "gpus" / "logs" / f"{run}.log").read_text()
    again = run_grid(tiny_config, ["epochs=1"], settings, [0], "gpus", gpus=["0", "1"], log=messages.append)
    assert set(again.values()) == {"skipped"}


def test_report_errors_are_one_line(sweep_main, tmp_path, capsys):
    assert sweep_main(["--report", str(tmp_path / "missing")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no sweep folder {tmp_path / 'missing'}"
    assert sweep_main(["--name", "x"]) == 1
    assert "--config and --name are required" in capsys.readouterr().err
    for seeds in ("0,x", "1,1"):
        assert sweep_main(["--config", "c.py", "--name", "x", "--seeds", seeds]) == 1
        assert capsys.readouterr().err.startswith(f"error: --seeds {seeds}: expected")


def test_setting_names_are_unique():
    with pytest.raises(SweepError, match="share the name"):
        expand([], [Setting("a", ("lr=1",)), Setting("a", ("lr=2",))])


def test_search_without_optuna_says_how_to_install_it(sweep_main, tiny_config, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    args = ["--config", str(tiny_config), "--name", "s", "--search", "2", "--range", "lr=1e-4:1e-2"]
    assert sweep_main(args) == 1
    assert "--search needs Optuna: pip install optuna" in capsys.readouterr().err


def test_a_diverging_run_fails_alone(sweep_main, tiny_config, tmp_path, monkeypatch, capsys):
    train = tailclip.engine.training.train

    def diverge_at_lr_1(cfg, run_name, **options):
        if cfg.lr == 1.0:
            raise tailclip.engine.training.NonFiniteLossError("non-finite loss (nan)")
        return train(cfg, run_name, **options)

    monkeypatch.setattr(tailclip.engine.training, "train", diverge_at_lr_1)
    assert sweep_main(["--config", str(tiny_config), "--name", "sw", "--grid", "lr=1.0,1e-3"]) == 1
    assert "not finished: lr=1.0_seed0" in capsys.readouterr().err
    assert [r["epoch"] for r in read_metrics(tmp_path / "runs" / "sw" / "lr=1e-3_seed0")] == [0, 1, 2]
    assert "| lr=1e-3 | 0.001 | 1 |" in (tmp_path / "runs" / "sw" / "results.md").read_text()


def test_a_torn_last_metrics_line_is_tolerated(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    lines = "".join(f'{{"epoch": {epoch}, "val/mAP": 0.5}}\n' for epoch in range(3))
    (run_dir / "metrics.jsonl").write_text(lines + '{"epoch": 3, "val/m')  # killed while appending
    assert run_progress(run_dir, 2) == "finished"
    assert run_progress(run_dir, 3) == "fresh"  # epoch 3 was never recorded, and no checkpoint
