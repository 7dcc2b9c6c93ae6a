"""test.py's decision metrics and --calibrate, and predict.py --thresholds, on a real tiny run.

The calibrated test metrics are checked against scikit-learn applied to what predict.py
selects with the thresholds file on the test images (the image cache is off, so both score
the same decoded images)."""
import json
import runpy
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_fscore_support

from tiny_dataset import CLASS_NAMES, TEST_LABELS, write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no positive image")


def script_main(name: str):
    return runpy.run_path(str(REPO / name))["main"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, train_main):
    """(config, data folder, run folder) of a 1-epoch run on the tiny dataset (clip + bal),
    and a calibration list file of 8 training images."""
    folder = tmp_path_factory.mktemp("calibration")
    root = write_dataset(folder / "data")
    (root / "held_out.txt").write_text("".join((root / "train.txt").read_text().splitlines(True)[:8]))
    config = write_config(folder / "tiny.py", root, folder / "runs", image_cache=False)
    assert train_main([f"--config={config}"]) == 0
    return config, root, folder / "runs" / "tiny"


def test_report_has_threshold_metrics_and_calibrates_on_a_named_split(tiny_run, capsys, tmp_path):
    config, root, run_dir = tiny_run
    assert script_main("test.py")([f"--config={config}", f"--calibrate={root / 'held_out.txt'}"]) == 0
    out = capsys.readouterr().out
    assert "(percent)                     CP      CR     CF1      OP      OR     OF1   CF1 head" in out
    # clip + bal trains no probability: no row at the threshold 0.5, and one line says why.
    assert "\nthreshold 0.5 " not in out and "\ntop-3 " in out and "\nper-class (held_out.txt) " in out
    assert "\nnote: no decisions at the threshold 0.5: clip + bal does not train sigmoid(logit)" in out
    # The file's 8 images are all training images: its thresholds are optimistic.
    assert "warning: calibrating on " + str(root / "held_out.txt") + ", whose 8 images are all training" in out
    assert "thresholds_best_valid_mAP.json" in out
    report = json.loads((run_dir / "test_best_valid_mAP.json").read_text())
    decisions = report["decisions"]
    assert "threshold" not in decisions and "at_threshold" not in decisions and "per_class" not in decisions
    assert decisions["score"] == "cosine" and "clip + bal" in decisions["no_threshold"]
    assert set(decisions["per_class_top3"]) == set(CLASS_NAMES)
    assert {"CP", "CR", "CF1", "OP", "OR", "OF1", "CF1_tail"} <= set(decisions["top3"])
    saved = json.loads((run_dir / "thresholds_best_valid_mAP.json").read_text())
    assert saved["score"] == "cosine" and all(-1 <= t <= 1 for t in saved["thresholds"])
    assert saved["classes"] == CLASS_NAMES and saved["split"] == str(root / "held_out.txt")
    assert saved["checkpoint"] == str(run_dir / "best_valid_mAP.pt")
    assert saved["criterion"] == "max F1" and len(saved["thresholds"]) == 4

    # predict.py with that file on the test images: sklearn on its selections gives the
    # report's calibrated CP, CR (OP, OR: every class is predicted here, where ML-GCN's OP
    # is scikit-learn's micro precision).
    output = tmp_path / "predictions.json"
    images = [str(root / f"images/test/{i:02d}.jpg") for i in range(len(TEST_LABELS))]
    assert script_main("predict.py")([f"--checkpoint={run_dir / 'best_valid_mAP.pt'}", *images,
                                      f"--thresholds={run_dir / 'thresholds_best_valid_mAP.json'}",
                                      f"--output={output}", "--workers=0", "--device=cpu"]) == 0
    assert "[per-class thresholds: " in capsys.readouterr().out
    document = json.loads(output.read_text())
    assert document["thresholds_file"] == str(run_dir / "thresholds_best_valid_mAP.json")
    predicted = np.zeros((len(TEST_LABELS), 4), dtype=int)
    for row, prediction in enumerate(document["predictions"]):
        for entry in prediction["above_class_threshold"]:
            predicted[row, CLASS_NAMES.index(entry["class"])] = 1
            assert entry["cosine"] >= saved["thresholds"][CLASS_NAMES.index(entry["class"])]
    targets = np.zeros_like(predicted)
    for row, labels in enumerate(TEST_LABELS):
        targets[row, labels] = 1
    calibrated = report["calibrated"]["metrics"]
    assert predicted.any(0).all()
    for average, keys in (("macro", ("CP", "CR")), ("micro", ("OP", "OR"))):
        p, r, _, _ = precision_recall_fscore_support(targets, predicted, average=average, zero_division=0)
        assert (calibrated[keys[0]], calibrated[keys[1]]) == pytest.approx((p, r), abs=1e-9)


def test_calibration_on_train_warns_and_a_target_precision_is_recorded(tiny_run, capsys):
    config, _, run_dir = tiny_run
    assert script_main("test.py")([f"--config={config}", "--calibrate=train", "--target-precision=0.9"]) == 0
    out = capsys.readouterr().out
    assert "warning: calibrating on the training split, which the model has learnt" in out
    saved = json.loads((run_dir / "thresholds_best_valid_mAP.json").read_text())
    assert saved["split"] == "train" and saved["target_precision"] == 0.9
    assert saved["criterion"] == "lowest threshold with precision >= 0.9"


def test_calibration_refuses_the_test_split(tiny_run, capsys, tmp_path):
    config, root, _ = tiny_run
    test_main = script_main("test.py")
    assert test_main([f"--config={config}", f"--calibrate={root / 'test.txt'}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is the test split that the report is on" in err
    mixed = tmp_path / "mixed.txt"
    lines = (root / "train.txt").read_text().splitlines(True)[:3] + (root / "test.txt").read_text().splitlines(True)[:1]
    mixed.write_text("".join(lines))
    assert test_main([f"--config={config}", f"--calibrate={mixed}"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "1 of its 4 images are in the test split (first: images/test/00.jpg)" in err
    assert test_main([f"--config={config}", f"--calibrate={tmp_path / 'none.txt'}"]) == 1
    assert "no such split file" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        test_main([f"--config={config}", "--target-precision=0.9"])
    assert "--target-precision needs --calibrate SPLIT" in capsys.readouterr().err


def test_predict_refuses_a_thresholds_file_of_other_classes(tiny_run, capsys, tmp_path):
    _, root, run_dir = tiny_run
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"classes": ["cat", "dog", "car", "tree"], "thresholds": [0.5] * 4}))
    assert script_main("predict.py")([f"--checkpoint={run_dir / 'best_valid_mAP.pt'}",
                                      str(root / "images/test/00.jpg"), f"--thresholds={other}",
                                      "--workers=0", "--device=cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "its classes are not the checkpoint's (first difference 2: 'car' vs 'red car')" in err


def test_predict_refuses_a_fixed_threshold_for_a_model_without_probabilities(tiny_run, capsys):
    _, root, run_dir = tiny_run
    assert script_main("predict.py")([f"--checkpoint={run_dir / 'best_valid_mAP.pt'}",
                                      str(root / "images/test/00.jpg"), "--threshold=0.5",
                                      "--workers=0", "--device=cpu"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threshold: no decisions at the threshold 0.5: clip + bal" in err
    assert "rank with --top-k" in err and "test.py --calibrate" in err
