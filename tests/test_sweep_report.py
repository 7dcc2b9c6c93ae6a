"""The report of a sweep folder: means and sample standard deviations over seeds at the best
and the last epoch (checked against numpy on hand-made metrics files), unfinished runs left
out, the paper's number beside runs of a published config, and the plots."""
import csv
import json
import math

import numpy as np
import pytest

from tailclip.tools.sweep_report import write_report

GROUPS = ("mAP", "mAP_head", "mAP_medium", "mAP_tail")


def write_run(folder, name, config, records):
    """A run folder with ``records`` as epochs 1, 2, ..., after an epoch-0 record (the model
    before training, as train.py logs it) that beats them all and must not count."""
    run = folder / name
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps({"dataset": "synthetic_mlt", **config}))
    before_training = {"epoch": 0, **{f"val/{g}": 1.0 for g in GROUPS}}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [before_training] + [
        {"epoch": e, **r} for e, r in enumerate(records, 1)]))


@pytest.fixture
def sweep_folder(tmp_path):
    """Two settings of asl_mul with 3 seeds of 3 epochs, random metrics, plus one run that
    stopped after epoch 2; returns the folder and the metrics [setting, seed, epoch, group]."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "sweep"
    metrics = rng.uniform(0.2, 0.9, (2, 3, 3, 4))
    for s, mul in enumerate((0.5, 2.0)):
        for seed in range(3):
            records = [{f"val/{g}": float(metrics[s, seed, e, i]) for i, g in enumerate(GROUPS)}
                       for e in range(3)]
            write_run(folder, f"asl_mul={mul}_seed{seed}", {"epochs": 3, "asl_mul": mul, "seed": seed,
                                                            "loss_function": ["clip", "bal"]}, records)
    write_run(folder, "asl_mul=2.0_seed7", {"epochs": 3, "asl_mul": 2.0, "seed": 7,
                                            "loss_function": ["clip", "bal"]}, [{"val/mAP": 1.0}] * 2)
    (folder / "sweep.json").write_text(json.dumps({"config": "configs/voc_mlt_rn50.py", "swept": ["asl_mul"],
                                                   "settings": ["asl_mul=2.0", "asl_mul=0.5"]}))
    return folder, metrics


def test_table_holds_mean_and_sample_std_over_seeds_at_best_and_last_epoch(sweep_folder):
    folder, metrics = sweep_folder
    paths = write_report(folder)
    assert [p.name for p in paths] == ["results.md", "results.csv", "results.png"]
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [row["setting"] for row in rows] == ["asl_mul=2.0", "asl_mul=0.5"]  # sweep.json's order
    for row, s in zip(rows, (1, 0)):
        assert row["seeds"] == "3" and float(row["asl_mul"]) == (0.5, 2.0)[s]
        best_epoch = metrics[s, :, :, 0].argmax(axis=1)  # per seed, by overall mAP
        for i, group in enumerate(GROUPS):
            best = metrics[s, np.arange(3), best_epoch, i]
            last = metrics[s, :, -1, i]
            for when, values in (("best", best), ("last", last)):
                assert float(row[f"{when}_{group}_mean"]) == pytest.approx(values.mean(), rel=1e-12)
                assert float(row[f"{when}_{group}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-12)
        assert row["paper_mAP"] == "0.861"

    table = (folder / "results.md").read_text()
    mean, std = metrics[1, :, -1, 3].mean(), metrics[1, :, -1, 3].std(ddof=1)
    row = next(line for line in table.splitlines() if line.startswith("| asl_mul=2.0 |"))
    assert row.endswith(f"| {100 * mean:.1f} ± {100 * std:.1f} | 86.1 |")  # tail (last), paper
    assert "Not finished (left out): asl_mul=2.0_seed7." in table
    assert (folder / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_single_seed_has_no_std_and_missing_groups_read_n_a(tmp_path):
    folder = tmp_path / "sweep"
    write_run(folder, "a_seed0", {"epochs": 1, "lr": 1.0}, [{"val/mAP": 0.5, "val/mAP_head": None}])
    write_run(folder, "b_seed0", {"epochs": 1, "lr": 2.0}, [{"val/mAP": 0.25, "val/mAP_head": None}])
    write_report(folder)
    rows = list(csv.DictReader(open(folder / "results.csv")))
    assert [(r["setting"], r["lr"], r["last_mAP_mean"]) for r in rows] == [("a", "1.0", "0.5"), ("b", "2.0", "0.25")]
    assert math.isnan(float(rows[0]["last_mAP_std"])) and math.isnan(float(rows[0]["last_mAP_head_mean"]))
    assert "| a | 1.0 | 1 | 50.0 | n/a |" in (folder / "results.md").read_text()
    assert "paper mAP" not in (folder / "results.md").read_text()  # not a published config


def test_categorical_settings_are_plotted_as_bars(tmp_path, monkeypatch):
    import matplotlib.axes
    bars, bar = [], matplotlib.axes.Axes.bar

    def recorded_bar(self, x, height, *args, **kwargs):
        bars.append(list(height))
        return bar(self, x, height, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "bar", recorded_bar)
    folder = tmp_path / "sweep"
    for name, terms, value in (("clip", ["clip"], 0.2), ("bal", ["bal"], 0.4)):
        write_run(folder, f"{name}_seed0", {"epochs": 1, "loss_function": terms},
                  [{f"val/{g}": value for g in GROUPS}])
    write_report(folder)
    assert bars == [[40.0, 20.0]] * 3  # head, medium and tail of "bal" and "clip", in percent


def test_settings_of_the_authors_runs_show_their_best_and_last_map(tmp_path, repo_root):
    from tailclip.config import load_config

    folder = tmp_path / "sweep"
    published = repo_root / "configs" / "voc_mlt_vitb16.py"
    for setting, overrides in (("paper", []), ("lr=3e-6", ["lr=3e-6"])):
        config = load_config(published, [*overrides, "seed=0"]).to_dict()
        write_run(folder, f"{setting}_seed0", config, [{f"val/{g}": 0.9 for g in GROUPS}] * config["epochs"])
    write_report(folder)
    rows = {row["setting"]: row for row in csv.DictReader(open(folder / "results.csv"))}
    # VOC-MLT ViT-B/16, the published config: two runs, best 92.54 (stopped after 22 epochs,
    # last 91.56) and 92.42 (complete, last 91.98), as the record's README lists them.
    paper = rows["paper"]
    assert paper["authors_runs"] == "2"
    assert [round(100 * float(paper[f"authors_{when}_mAP_{end}"]), 2) for when in ("best", "last")
            for end in ("min", "max")] == [92.42, 92.54, 91.56, 91.98]
    assert rows["lr=3e-6"]["authors_runs"] == "0" and rows["lr=3e-6"]["authors_best_mAP_min"] == ""
    table = (folder / "results.md").read_text()
    paper_row = next(line for line in table.splitlines() if line.startswith("| paper |"))
    assert paper_row.endswith("| 2 | 92.4-92.5 | 91.6-92.0 |")
    assert next(line for line in table.splitlines() if line.startswith("| lr=3e-6 |")).endswith("| 0 | - | - |")
