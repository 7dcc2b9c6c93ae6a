"""compare.py: a run folder made of one of the authors' complete runs is within their range, a
copy 1 point lower is below it; the files written, the TensorBoard export as tensorboard reads
it, and the one-line errors."""
import json

import pytest

from tailclip.config import Config
from tailclip.metrics import MAP_NAMES as FIGURES
from tailclip.tools.authors_record import load_record
from tailclip.tools.comparison import compare, write_comparison

# COCO-MLT ViT-B/16, the published config: one complete curve (three copies of it).
AUTHORS_RUN = "coco_mlt_vitb16_nocaptions_clip_bal_sw_lw_ls_7"


@pytest.fixture(scope="module")
def record():
    return load_record()


@pytest.fixture(scope="module")
def authors_run(record):
    return next(run for run in record if run.label == AUTHORS_RUN)


def write_run_folder(folder, config: dict, epochs, shift: float = 0.0):
    """A run folder in train.py's format with the authors' epochs (test figures moved by
    ``shift``) after an epoch-0 evaluation that beats them all and must not count."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    before_training = {"epoch": 0, "mAP_unit": "fraction", **{f"val/{f}": 1.0 for f in FIGURES}}
    lines = [before_training] + [{"mAP_unit": "fraction", **record, **{
        f"val/{f}": record[f"val/{f}"] + shift for f in FIGURES}} for record in epochs]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return folder


def their_config(run) -> dict:
    """The authors' logged config as our config.json would hold it, computed as their code did
    (in float32, as the published configs do)."""
    values = run.config
    return Config.from_dict({**{k: v for k, v in values.items() if k in Config().to_dict()},
                             "loss_function": list(values["loss_function"]), "precision": "fp32"}).to_dict()


def test_a_copy_of_an_authors_complete_run_is_within_its_range(tmp_path, record, authors_run):
    folder = write_run_folder(tmp_path / "copy", their_config(authors_run), authors_run.epochs)
    result = compare(folder, record)
    assert [summary["run"] for summary in result["authors"]] == [AUTHORS_RUN]
    assert result["finished"] and result["authors"][0]["complete"]
    assert [row["verdict"] for row in result["figures"]] == ["within"] * 8
    best = max(authors_run.epochs, key=lambda record: record["val/mAP"])
    assert result["ours"]["best_epoch"] == best["epoch"] == 38
    assert round(100 * result["ours"]["best_mAP"], 2) == 74.33
    assert result["ours"]["last_mAP_tail"] == authors_run.epochs[-1]["val/mAP_tail"]


def test_a_copy_one_point_lower_is_below_the_range(tmp_path, record, authors_run):
    folder = write_run_folder(tmp_path / "lower", their_config(authors_run), authors_run.epochs, shift=-0.01)
    result = compare(folder, record)
    assert [row["verdict"] for row in result["figures"]] == ["below by 1.00"] * 8
    higher = write_run_folder(tmp_path / "higher", their_config(authors_run), authors_run.epochs, shift=0.002)
    assert {row["verdict"] for row in compare(higher, record)["figures"]} == {"above by 0.20"}


def test_a_running_run_is_held_against_the_authors_first_epochs(tmp_path, record):
    # VOC-MLT ViT-B/16, published config: a run stopped after 22 epochs and a complete one.
    complete = next(run for run in record if run.label == "voc_mlt_vitb16_nocaptions_clip_bal_sw_lw_ls_8")
    folder = write_run_folder(tmp_path / "running", {**their_config(complete)}, complete.epochs[:10])
    result = compare(folder, record)
    assert not result["finished"] and len(result["authors"]) == 2
    for summary in result["authors"]:
        run = next(r for r in record if r.label == summary["run"])
        first_ten = [r["val/mAP"] for r in run.epochs[:10]]
        assert summary["best_mAP"] == max(first_ten) and summary["last_epoch"] == 10
    assert result["figures"][0]["verdict"] == "within"


def test_files_written_and_the_per_epoch_table(tmp_path, record, authors_run):
    folder = write_run_folder(tmp_path / "copy", their_config(authors_run), authors_run.epochs[:40])
    result, paths = write_comparison(folder, record)
    assert [p.name for p in paths] == ["comparison.md", "comparison.json", "comparison.png"]
    assert json.loads(paths[1].read_text()) == result and result["mAP_unit"] == "fraction"
    table = [row for row in result["per_epoch"]]
    assert [row["epoch"] for row in table] == list(range(1, 51))  # theirs run to 50
    assert table[44]["ours_mAP"] is None and table[44]["authors_mAP_min"] == authors_run.epochs[44]["val/mAP"]
    assert table[0]["ours_mAP_medium"] == table[0]["authors_mAP_medium_max"] == authors_run.epochs[0]["val/mAP_medium"]
    text = paths[0].read_text()
    epoch_38 = f"{100 * authors_run.epochs[37]['val/mAP']:.2f}"
    assert f"| 38 | {epoch_38} | {epoch_38} |" in text
    assert "stopped early" not in text and "complete (50 epochs)" in text
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_matching_run_lists_the_nearest_with_their_differences(tmp_path, record, authors_run):
    config = {**their_config(authors_run), "lr": 2e-6}
    result, paths = write_comparison(write_run_folder(tmp_path / "other_lr", config, authors_run.epochs[:3]), record)
    assert result["authors"] == [] and result["figures"] == []
    assert result["nearest"][0]["run"] == AUTHORS_RUN
    assert result["nearest"][0]["differences"] == [{"option": "lr", "ours": "2e-6", "theirs": "1e-6"}]
    assert "lr 2e-6 vs 1e-6" in paths[0].read_text() and paths[2].is_file()


def test_tensorboard_export_has_our_tags_in_our_units(tmp_path, record, authors_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = write_run_folder(tmp_path / "copy", their_config(authors_run), authors_run.epochs[:5])
    _, paths = write_comparison(folder, record, tensorboard=True)
    assert paths[3] == folder / "authors" / AUTHORS_RUN
    write_comparison(folder, record, tensorboard=True)  # again: replaces, does not add
    events = EventAccumulator(str(paths[3]))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"val/mAP", "val/mAP_head", "val/mAP_medium", "val/mAP_tail", "val/loss", "train/loss"} <= tags
    assert not any("middle" in tag for tag in tags)
    medium = events.Scalars("val/mAP_medium")
    assert [e.step for e in medium] == list(range(1, 51))
    assert medium[0].value == pytest.approx(100 * authors_run.epochs[0]["val/mAP_medium"], rel=1e-6)
    assert events.Scalars("train/loss")[2].value == pytest.approx(authors_run.epochs[2]["train/loss"], rel=1e-6)


def test_command_line_prints_the_verdicts(tmp_path, run_script, authors_run):
    folder = write_run_folder(tmp_path / "copy", their_config(authors_run), authors_run.epochs)
    result = run_script("compare.py", folder)
    assert result.returncode == 0, result.stderr
    assert "| mAP (best) | 74.33 | 38 | 74.33 | within |" in result.stdout
    assert f"wrote {folder / 'comparison.png'}" in result.stdout


def test_command_line_refuses_the_demo_and_a_folder_that_is_no_run_in_one_line(tmp_path, repo_root, run_script):
    from tailclip.config import load_config

    demo = write_run_folder(tmp_path / "demo", load_config(repo_root / "configs" / "demo.py").to_dict(),
                            [{"epoch": 1, **{f"val/{f}": 0.5 for f in FIGURES}}])
    (tmp_path / "empty").mkdir()
    result = run_script("compare.py", demo, tmp_path / "empty")  # one line per folder, both refused
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: the authors' record holds voc_mlt and coco_mlt runs only, not dataset 'synthetic_mlt'",
        f"error: {tmp_path / 'empty'} is not a TailCLIP run folder (no config.json and metrics.jsonl)"]
