"""The authors' record: shipped byte-identical to the reference copy, read with identical curves
merged, and matched against our configs (their "asl" and "bal" as one loss before they split them, numbers written as
strings, the nearest runs with their differing settings)."""
import hashlib
import json
import re
import shutil
import subprocess

import pytest

from tailclip.config import Config, load_config
from tailclip.tools.authors_record import (
    RECORD_FILE,
    RECORD_SHA256,
    RecordError,
    check_record_speaks_to,
    load_record,
    matching_runs,
    nearest_runs,
)

REFERENCE = "authors_runs/lm_clip_runs.json"


def test_shipped_record_has_its_pinned_sha256():
    assert hashlib.sha256(RECORD_FILE.read_bytes()).hexdigest() == RECORD_SHA256


def test_a_changed_shipped_record_is_refused(tmp_path, monkeypatch):
    from tailclip.tools import authors_record

    changed = tmp_path / "lm_clip_runs.json"
    changed.write_bytes(RECORD_FILE.read_bytes() + b" ")
    monkeypatch.setattr(authors_record, "RECORD_FILE", changed)
    with pytest.raises(RecordError, match="differs from the shipped record"):
        load_record()
    assert len(load_record(RECORD_FILE)) == 114  # another path: read as it is


def test_shipped_record_is_the_reference_file_with_its_listed_sha256(shared_data):
    listed = re.search(r"authors_runs/lm_clip_runs\.json.*?sha256 `([0-9a-f]{64})`",
                       (shared_data / "README.md").read_text(), flags=re.S)[1]
    shipped = RECORD_FILE.read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == listed == RECORD_SHA256
    assert shipped == (shared_data / REFERENCE).read_bytes()


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
@pytest.mark.parametrize("name", ["lm_clip_runs.json", "README.md"])
def test_record_and_its_note_are_not_ignored_by_git(repo_root, name):
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", f"datasets/authors_runs/{name}"],
                            cwd=repo_root)
    assert result.returncode == 1  # 1: not ignored


def test_the_record_reads_as_114_curves_with_the_copies_merged():
    entries = json.loads(RECORD_FILE.read_text())["runs"]
    runs = load_record()
    assert len(entries) == 121 and sum(not e["epochs"] for e in entries) == 3
    assert len(runs) == 114 and sum(len(run.names) for run in runs) == 118
    published = next(run for run in runs if "voc_mlt_vitb16_nocaptions_s1.35" in run.names)
    assert set(published.names) == {"voc_mlt_vitb16_nocaptions_clip_bal_sw_lw_ls", "voc_mlt_vitb16_nocaptions_s1.35",
                                    "voc_mlt_vitb16_nocaptions_lambda0.4"}
    assert published.label == published.names[0]
    assert len(published.epochs) == 22 and not published.complete
    best = max(published.epochs, key=lambda record: record["val/mAP"])
    assert (best["epoch"], round(100 * best["val/mAP"], 2)) == (18, 92.54)  # the paper's figure
    assert set(best) == {"epoch", *(f"{split}/{name}" for split in ("train", "val") for name in
                                    ("loss", "mAP", "mAP_head", "mAP_medium", "mAP_tail", "AUROC"))}
    labels = [run.label for run in runs]
    assert len(set(labels)) == len(labels)  # two distinct curves under one folder name get distinct labels


def authors_entry(name, epochs, **config):
    logged = {"dataset": "voc_mlt", "model_name": "ViT-B/16", "loss_function": "['clip', 'bal']",
              "asl_mul": "0.4", "asl_gamma_neg": "9.8", "asl_gamma_pos": "0.0", "asl_clip": "0.05",
              "asl_eps": "1e-08", "label_smoothing": "0.1", "use_sample_weights": "True",
              "sample_weights_power": "1.35", "use_weighted_loss": "True", "class_weights_power": "1.35",
              "lr": "1e-06", "weight_decay": "0.01", "optimizer": "AdamW", "batch_size": "8", "epochs": "2",
              "size": "224", "max_length": "77", "use_dataset_train_captions": "False",
              "class_caption": "a photo of a ", "device": "cuda", "num_workers": "4", **config}
    return {"run": name, "event_file": f"runs/{name}/events.out.tfevents.1.host.1.0", "commit": "0" * 40,
            "commit_date": "2024-08-15", "config": logged,
            "epochs": [{"epoch": e, "val/mAP": v, "val/mAP_middle": v} for e, v in enumerate(epochs, 1)]}


@pytest.fixture
def record(tmp_path):
    """Hand-made runs: "asl" and "bal" spellings of one setting, a copy of one curve, another
    learning rate, a clip-only run with other BAL settings, a run that logged nothing."""
    entries = [authors_entry("as_asl", [0.5, 0.6], loss_function="['clip', 'asl']"),
               authors_entry("as_bal", [0.55, 0.58]),
               authors_entry("copy_of_as_asl", [0.5, 0.6], loss_function="['clip', 'asl']"),
               authors_entry("lr_2e-6", [0.4, 0.7], lr="2e-06"),
               authors_entry("clip_only", [0.3, 0.35], loss_function="['clip']", asl_gamma_neg="12",
                             use_sample_weights="False", sample_weights_power="2.0"),
               authors_entry("nothing_logged", [])]
    path = tmp_path / "record.json"
    path.write_text(json.dumps({"source": "test", "epoch_numbering": "test", "runs": entries}))
    return load_record(path)


def ours(**options):
    return {**Config(dataset="voc_mlt", model_name="ViT-B/16", loss_function=["clip", "bal"], asl_mul=0.4,
                     asl_gamma_neg=9.8, label_smoothing=0.1, sample_weights_power=1.35,
                     class_weights_power=1.35, lr=1e-6, epochs=2).to_dict(), **options}


def test_identical_curves_count_once_and_empty_runs_are_left_out(record):
    assert [run.names for run in record] == [("as_asl", "copy_of_as_asl"), ("as_bal",), ("lr_2e-6",), ("clip_only",)]
    assert record[0].epochs[0] == {"epoch": 1, "val/mAP": 0.5, "val/mAP_medium": 0.5}  # "middle" is medium


def test_before_the_split_their_asl_and_bal_are_both_our_bal(record):  # the fixture's runs start at time 1
    assert [run.label for run in matching_runs(ours(), record)] == ["as_asl", "as_bal"]
    assert [run.label for run in matching_runs(ours(loss_function=["bal", "clip"]), record)] == ["as_asl", "as_bal"]
    assert matching_runs(ours(loss_function=["clip", "asl"]), record) == []  # ours is the plain ASL


def test_numbers_compare_as_numbers(record):
    assert [run.label for run in matching_runs(ours(lr=2e-6), record)] == ["lr_2e-6"]
    assert [run.label for run in matching_runs(ours(lr=0.000002, asl_mul=0.40), record)] == ["lr_2e-6"]
    assert matching_runs(ours(lr=2.0000001e-6), record) == []
    assert matching_runs(ours(batch_size=16), record) == []


def test_settings_that_do_not_act_are_not_compared(record):
    # Contrastive loss alone, no sampler: the BAL options and the sampling power do nothing.
    contrastive_only = ours(loss_function=["clip"], use_sample_weights=False, asl_gamma_neg=4.0,
                            sample_weights_power=0.5)
    assert [run.label for run in matching_runs(contrastive_only, record)] == ["clip_only"]
    assert matching_runs(ours(loss_function=["clip"]), record) == []  # the sampler is on in ours


def test_options_the_authors_code_fixes_must_hold_their_value(record):
    assert matching_runs(ours(finetune="prompt"), record) == []
    assert matching_runs(ours(normalize="clip"), record) == []
    assert [run.label for run in matching_runs(ours(contrastive="softmax"), record)] == ["as_asl", "as_bal"]


def test_nearest_runs_name_each_differing_setting_with_both_values(record):
    nearest = nearest_runs(ours(lr=1.5e-6, asl_mul=0.5), record)
    assert [(run.label, [str(d) for d in found]) for run, found in nearest] == [
        ("as_asl", ["lr 1.5e-6 vs 1e-6", "asl_mul 0.5 vs 0.4"]),
        ("as_bal", ["lr 1.5e-6 vs 1e-6", "asl_mul 0.5 vs 0.4"]),
        ("lr_2e-6", ["lr 1.5e-6 vs 2e-6", "asl_mul 0.5 vs 0.4"])]
    assert [run.label for run, _ in nearest_runs(ours(asl_mul=0.5), record)] == ["as_asl", "as_bal"]  # fewest only
    [(_, found)] = nearest_runs(ours(loss_function=["clip"], finetune="prompt", lr=2e-6), record, limit=1)
    assert [str(d) for d in found] == ["loss_function clip vs clip+bal", "finetune prompt vs full"]


@pytest.mark.parametrize("dataset", ["synthetic_mlt", "custom"])
def test_the_record_speaks_to_voc_and_coco_only(dataset):
    check_record_speaks_to({"dataset": "coco_mlt"})
    with pytest.raises(RecordError, match="voc_mlt and coco_mlt runs only"):
        check_record_speaks_to({"dataset": dataset})


# The published configs against the record: the runs of the same settings, as the record's
# README lists them.
PUBLISHED = {
    "voc_mlt_vitb16": {"voc_mlt_vitb16_nocaptions_clip_bal_sw_lw_ls", "voc_mlt_vitb16_nocaptions_clip_bal_sw_lw_ls_8"},
    "voc_mlt_rn50": {"voc_mlt_rn50_nocaptions_clip_bal_sw_lw_ls_27"},
    "coco_mlt_vitb16": {"coco_mlt_vitb16_nocaptions_clip_bal_sw_lw_ls_7"},
    "coco_mlt_rn50": {"coco_mlt_rn50_nocaptions_clip_bal_sw_lw_ls_2", "coco_mlt_rn50_nocaptions_clip_bal_sw_lw_ls_6"},
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_each_published_config_matches_the_authors_runs_of_its_figure(repo_root, name):
    config = load_config(repo_root / "configs" / f"{name}.py").to_dict()
    assert {run.label for run in matching_runs(config, load_record())} == PUBLISHED[name]


def _results_cell(runs) -> str:
    cells = []
    for run in runs:
        best = max(run.epochs, key=lambda record: record["val/mAP"])
        state = "complete" if run.complete else f"stopped after {len(run.epochs)} of {run.planned_epochs} epochs"
        cells.append(f"{100 * best['val/mAP']:.2f} ({best['epoch']}), {100 * run.epochs[-1]['val/mAP']:.2f}: {state}")
    return "; ".join(cells)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_readme_results_table_gives_the_records_figures(repo_root, name):
    readme = (repo_root / "README.md").read_text()
    row = next(line for line in readme.splitlines() if f"| `configs/{name}.py` |" in line)
    config = load_config(repo_root / "configs" / f"{name}.py").to_dict()
    assert f"| {_results_cell(matching_runs(config, load_record()))} |" in row
