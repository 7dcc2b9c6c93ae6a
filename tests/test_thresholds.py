"""tailclip.thresholds: decision metrics against scikit-learn, calibration on hand-built
scores whose best thresholds are known, and the thresholds file. (ML-GCN's conventions and
the decision score of each objective: test_decision_rules.py.)"""
import json

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import precision_recall_fscore_support

from tailclip import thresholds as th
from tailclip.engine.files import write_json

GROUPS = {"head": [0, 1], "medium": [2], "tail": [3, 4]}


def _sklearn(predicted, targets, average, labels=None):
    labels = list(range(targets.shape[1])) if labels is None else labels
    p, r, f, _ = precision_recall_fscore_support(targets, predicted, average=average, labels=labels,
                                                 zero_division=0)
    return p, r, f


def _check_against_sklearn(predicted, targets, metrics, suffix=""):
    # scikit-learn's micro precision is ML-GCN's OP where every class is predicted.
    assert np.asarray(predicted).any(0).all()
    cp, cr, _ = _sklearn(predicted, targets, "macro")
    op, orr, of1 = _sklearn(predicted, targets, "micro")
    assert metrics[f"CP{suffix}"] == pytest.approx(cp) and metrics[f"CR{suffix}"] == pytest.approx(cr)
    assert metrics[f"CF1{suffix}"] == pytest.approx(2 * cp * cr / (cp + cr) if cp + cr else 0.0)
    assert (metrics[f"OP{suffix}"], metrics[f"OR{suffix}"], metrics[f"OF1{suffix}"]) == pytest.approx((op, orr, of1))
    p, r, f = _sklearn(predicted, targets, None)
    np.testing.assert_allclose(metrics[f"P{suffix}"], p)
    np.testing.assert_allclose(metrics[f"R{suffix}"], r)
    np.testing.assert_allclose(metrics[f"F1{suffix}"], f)
    for group, classes in GROUPS.items():
        gp, gr, _ = _sklearn(predicted, targets, "macro", labels=classes)
        assert (metrics[f"CP_{group}{suffix}"], metrics[f"CR_{group}{suffix}"]) == pytest.approx((gp, gr))


@pytest.mark.parametrize("seed", range(5))
def test_metrics_match_sklearn_on_random_scores(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((40, 5)) < 0.3).astype(int)
    logits = rng.normal(size=(40, 5)) * 2 + targets
    probabilities = expit(torch.tensor(logits, dtype=torch.float32).double().numpy())
    metrics = th.decision_metrics(probabilities >= 0.6, targets, GROUPS)
    _check_against_sklearn(expit(logits) >= 0.6, targets, metrics)
    top3 = np.zeros_like(targets)
    for row, classes in enumerate(np.argsort(-logits, axis=1)[:, :3]):
        top3[row, classes] = 1
    _check_against_sklearn(top3, targets, th.decisions(logits, targets, th.COSINE, GROUPS), suffix="_top3")
    assert top3.sum(1).tolist() == [3] * 40


def test_edge_cases_follow_zero_division_0_and_ml_gcn_op():
    # class 0: never predicted; class 1: no positive label but predicted; class 2: neither;
    # class 3: perfect; class 4: all wrong.
    targets = np.array([[1, 0, 0, 1, 0], [1, 0, 0, 0, 1], [0, 0, 0, 1, 0]])
    logits = np.array([[-5, 3, -5, 2, 4], [-5, -5, -5, -5, -5], [-5, 3, -5, 2, -5]], dtype=float)
    metrics = th.decisions(expit(logits), targets, th.PROBABILITY, GROUPS)
    predicted = expit(logits) >= 0.5
    cp, cr, _ = _sklearn(predicted, targets, "macro")
    assert (metrics["CP"], metrics["CR"]) == pytest.approx((cp, cr))
    assert metrics["P"] == [0, 0, 0, 1, 0] and metrics["R"] == [0, 0, 0, 1, 0]
    # 2 right of 5 predictions, and classes 0 and 2, never predicted, count one each (ML-GCN).
    assert metrics["CP"] == pytest.approx(0.2) and metrics["OP"] == pytest.approx(2 / 7)
    assert metrics["OR"] == pytest.approx(2 / 5)
    nothing = th.decision_metrics(np.zeros((3, 5), bool), targets)
    assert [nothing[k] for k in th.SUMMARY_NAMES] == [0.0] * 6


def test_top_k_breaks_ties_by_class_index():
    predicted = th.top_k_predictions(np.array([[1.0, 1.0, 1.0, 1.0, 0.0]]))
    assert predicted.tolist() == [[True, True, True, False, False]]


def test_calibration_finds_the_known_f1_optimum():
    # Class 0, scores best first: + + - + - - : F1 by cut = 2/4, 4/5, 4/6, 6/7, 6/8, 6/9:
    # the best cut is after the 4th score (0.6). Class 1: + - - -: the top score (0.9).
    # Class 2 has no positive image and keeps the default.
    p0 = [0.9, 0.8, 0.7, 0.6, 0.3, 0.2]
    p1 = [0.9, 0.5, 0.4, 0.1, 0.05, 0.01]
    probabilities = np.array([p0, p1, [0.5] * 6]).T
    targets = np.array([[1, 1, 0, 1, 0, 0], [1, 0, 0, 0, 0, 0], [0] * 6]).T
    thresholds, notes = th.calibrate(probabilities, targets, th.PROBABILITY)
    np.testing.assert_array_equal(thresholds, [0.6, 0.9, 0.5])
    assert list(notes) == [2] and "no positive image" in notes[2]
    # The chosen threshold is F1's maximum over every threshold (brute force, sklearn's F1).
    for c in (0, 1):
        grid = np.unique(probabilities[:, c])
        f1 = [precision_recall_fscore_support(targets[:, c], probabilities[:, c] >= t, average="binary",
                                              zero_division=0)[2] for t in grid]
        assert f1[list(grid).index(thresholds[c])] == max(f1)


def test_calibration_ties_take_the_highest_threshold():
    # + - - + - : the cuts after the first and the fourth score both give F1 2/3.
    probabilities = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]]).T
    targets = np.array([[1, 0, 0, 1, 0]]).T
    thresholds, _ = th.calibrate(probabilities, targets, th.PROBABILITY)
    assert thresholds.tolist() == [0.9]


def test_calibration_to_a_target_precision():
    # + + - + - + : precision by cut 1, 1, 2/3, 3/4, 3/5, 4/6.
    probabilities = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]]).T
    targets = np.array([[1, 1, 0, 1, 0, 1], [0, 1, 1, 0, 0, 0]]).T
    thresholds, notes = th.calibrate(probabilities, targets, th.PROBABILITY, target_precision=0.75)
    assert thresholds[0] == 0.6  # the lowest threshold with precision >= 0.75
    # Class 1 never reaches 0.75 (best 2/3): its F1-maximising threshold (0.7, F1 4/5).
    assert thresholds[1] == 0.7 and "no threshold reaches precision 0.75" in notes[1]
    loose, _ = th.calibrate(probabilities, targets, th.PROBABILITY, target_precision=0.6)
    assert loose[0] == 0.4  # 4/6 >= 0.6 at the lowest cut


def test_ties_in_scores_are_one_threshold():
    probabilities = np.array([[0.8, 0.8, 0.8, 0.1]]).T
    targets = np.array([[1, 0, 0, 1]]).T
    # Cut at 0.8 predicts three (F1 2/5); at 0.1 all four (F1 2/3): never a split inside a tie.
    thresholds, _ = th.calibrate(probabilities, targets, th.PROBABILITY)
    assert thresholds.tolist() == [0.1]


def test_thresholds_file_round_trip_and_refusals(tmp_path):
    names = ["cat", "dog", "bird"]
    path = write_json(tmp_path / "t.json", th.thresholds_document(
        dict(zip(names, [0.2, 0.5, 0.7])), th.PROBABILITY, "val.txt", "best.pt", None,
        {"dog": "no positive image: kept the global threshold 0.5"}))
    document = json.loads(path.read_text())
    assert document["classes"] == names and document["split"] == "val.txt"
    assert document["notes"] == {"dog": "no positive image: kept the global threshold 0.5"}
    assert th.read_thresholds(path, names, th.PROBABILITY).tolist() == [0.2, 0.5, 0.7]
    with pytest.raises(th.ThresholdsFileError, match=r"not the checkpoint's \(first difference 1: 'dog' vs 'cow'\)"):
        th.read_thresholds(path, ["cat", "cow", "bird"], th.PROBABILITY)
    with pytest.raises(th.ThresholdsFileError, match="3 classes, the checkpoint has 2"):
        th.read_thresholds(path, ["cat", "dog"], th.PROBABILITY)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(th.ThresholdsFileError, match="not a thresholds file"):
        th.read_thresholds(tmp_path / "bad.json", names, th.PROBABILITY)
    with pytest.raises(th.ThresholdsFileError, match="not found"):
        th.read_thresholds(tmp_path / "missing.json", names, th.PROBABILITY)
