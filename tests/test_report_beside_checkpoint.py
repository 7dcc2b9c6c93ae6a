"""test.py on another run's checkpoint: the report lies beside that checkpoint, the config's
run folder is left as it was, and the checkpoint is evaluated with its own config (its own
loss terms, so its own loss and its own decision rules), a difference in what was learnt
named in one line."""
import json
import runpy
from pathlib import Path

import pytest

from tailclip.engine.logger import read_metrics
from tiny_dataset import write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no positive image")


def _files(folder: Path) -> dict:
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, train_main):
    """(the config of run "mine", whose folder holds its own report; the folder of run
    "other", trained with clip + bce on the same data)."""
    folder = tmp_path_factory.mktemp("beside")
    root = write_dataset(folder / "data")
    other = write_config(folder / "other.py", root, folder / "runs", loss_function=["clip", "bce"])
    assert train_main([f"--config={other}"]) == 0
    mine = write_config(folder / "mine.py", root, folder / "runs", model_name="RN-tiny")  # clip + bal
    (folder / "runs" / "mine").mkdir()
    (folder / "runs" / "mine" / "test_best_valid_mAP.json").write_text('{"checkpoint": "its own"}\n')
    return mine, folder / "runs" / "other"


def test_report_of_another_run_s_checkpoint_lies_beside_it(runs, capsys):
    mine, other = runs
    before = _files(mine.parent / "runs" / "mine")
    test_main = runpy.run_path(str(REPO / "test.py"))["main"]
    assert test_main([f"--config={mine}", f"--checkpoint={other / 'best_valid_mAP.pt'}",
                      f"--calibrate={mine.parent / 'data' / 'train.txt'}"]) == 0
    out = capsys.readouterr().out
    assert _files(mine.parent / "runs" / "mine") == before
    assert {"test_best_valid_mAP.json", "per_class_ap_best_valid_mAP.png",
            "thresholds_best_valid_mAP.json"} <= {path.name for path in other.iterdir()}
    assert f"wrote {other / 'test_best_valid_mAP.json'}" in out

    # The checkpoint's own objective: the loss its run logged for that epoch.
    report = json.loads((other / "test_best_valid_mAP.json").read_text())
    [logged] = [record for record in read_metrics(other) if record["epoch"] == report["epoch"]]
    assert report["loss"] == pytest.approx(logged["val/loss"], rel=1e-5)
    assert f"loss {logged['val/loss']:.4f}" in out
    [note] = [line for line in out.splitlines() if line.startswith("note: evaluated with the checkpoint's own")]
    assert "loss_function = ['clip', 'bce'] (the file: ['clip', 'bal'])" in note
    assert "model_name = 'ViT-tiny' (the file: 'RN-tiny')" in note
    assert report["config_differences"]["loss_function"] == {"checkpoint": ["clip", "bce"],
                                                             "config_file": ["clip", "bal"]}
    assert report["model_name"] == "ViT-tiny"

    # The tiny test split has no single-label image of two classes: the console says which
    # mAP it prints, the JSON carries both (as left out, and counted as AP 0).
    single = report["subsets"]["single_label"]
    assert report["without_positives"] == {"all": [], "multi_label": ["dog", "tree"],
                                           "single_label": ["cat", "red car"]}
    assert single["mAP_empty_as_0"] == pytest.approx(single["mAP"] / 2)
    assert ("note: its single-label images: mAP leaves out 2 classes without a positive image (cat, red car); "
            "counting them as AP 0, as scikit-learn and the authors' code do: mAP "
            f"{100 * single['mAP_empty_as_0']:.1f}") in out

    # A BCE model outputs probabilities: the rule at 0.5 and ML-GCN's top-3 among its classes.
    assert "\nthreshold 0.5 " in out and "\ntop-3, p >= 0.5 " in out and "no decisions at" not in out
    decisions = report["decisions"]
    assert decisions["score"] == "probability" and decisions["threshold"] == 0.5
    assert set(decisions["at_threshold"]) >= {"CP", "CR", "CF1", "OP", "OR", "OF1"}
    thresholds = json.loads((other / "thresholds_best_valid_mAP.json").read_text())
    assert thresholds["score"] == "probability" and all(0 <= t <= 1 for t in thresholds["thresholds"])
