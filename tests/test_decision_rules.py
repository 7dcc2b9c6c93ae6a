"""Decisions on a real probability, and the conventions of the decision metrics and of mAP.

The decision metrics are checked against ML-GCN's formulas, restated here as loops over
classes (scores >= 0 predict, as its logits are; a never-predicted class counts one
prediction; top-k keeps a top class only where it passes the threshold), and against a
3-image example computed by hand. mAP's two conventions for a class without a positive image
are checked against scikit-learn.
"""
import json
import runpy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import expit
from sklearn.metrics import average_precision_score

from tailclip import thresholds as th
from tailclip.config import LOSS_TERMS
from tailclip.engine.files import write_json
from tailclip.metrics import evaluate
from tailclip.tools import predict

NAMES = ("CP", "CR", "CF1", "OP", "OR", "OF1")
REPO = Path(__file__).resolve().parents[1]


def ml_gcn_metrics(scores, targets) -> dict:
    """ML-GCN's ``evaluation``: a score >= 0 is a prediction."""
    num_classes = scores.shape[1]
    correct, predicted, actual = np.zeros(num_classes), np.zeros(num_classes), np.zeros(num_classes)
    for k in range(num_classes):
        actual[k] = np.sum(targets[:, k] == 1)
        predicted[k] = np.sum(scores[:, k] >= 0)
        correct[k] = np.sum(targets[:, k] * (scores[:, k] >= 0))
    predicted[predicted == 0] = 1
    op, orr = correct.sum() / predicted.sum(), correct.sum() / actual.sum()
    cp, cr = np.sum(correct / predicted) / num_classes, np.sum(correct / actual) / num_classes
    return {"CP": cp, "CR": cr, "CF1": 2 * cp * cr / (cp + cr), "OP": op, "OR": orr, "OF1": 2 * op * orr / (op + orr)}


def ml_gcn_top_k_scores(logits, k: int) -> np.ndarray:
    """ML-GCN's ``overall_topk``: +1 for a top-k class whose logit is >= 0, else -1."""
    scores = -np.ones(logits.shape)
    for row in range(logits.shape[0]):
        for c in np.argsort(-logits[row], kind="stable")[:k]:
            scores[row, c] = 1 if logits[row, c] >= 0 else -1
    return scores


@pytest.mark.parametrize("seed", range(4))
def test_decision_metrics_are_ml_gcn_s(seed):
    rng = np.random.default_rng(seed)
    targets = (rng.random((30, 6)) < 0.3).astype(int)
    targets[0] = 1  # every class has a positive image (ML-GCN's CR is NaN otherwise)
    logits = rng.normal(size=(30, 6)) * 2 + targets - 1.5  # some classes rarely pass 0
    ours = th.decisions(expit(logits), targets, th.PROBABILITY)
    reference = ml_gcn_metrics(logits, targets)
    top3 = ml_gcn_metrics(ml_gcn_top_k_scores(logits, 3), targets)
    assert [ours[name] for name in NAMES] == pytest.approx([reference[name] for name in NAMES])
    assert [ours[f"{name}_top3"] for name in NAMES] == pytest.approx([top3[name] for name in NAMES])


def test_top_3_by_hand_keeps_only_the_classes_that_pass_the_threshold():
    # Classes A B C D. Image 1 has A, B; image 2 B, C; image 3 C, D.
    targets = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    probabilities = np.array([[0.9, 0.8, 0.3, 0.1], [0.2, 0.1, 0.3, 0.25], [0.3, 0.2, 0.4, 0.05]])
    # ML-GCN: top-3 and p >= 0.5 predicts A and B in image 1 only. Recall A 1, B 1/2, C 0,
    # D 0: CR 0.375. Precision A 1, B 1, C and D never predicted 0: CP 0.5; OP 2 right of
    # 2 predictions plus 1 for each of C and D: 0.5; OR 2 of 6 positives.
    metrics = th.decisions(probabilities, targets, th.PROBABILITY)
    assert metrics["CR_top3"] == pytest.approx(0.375) and metrics["CP_top3"] == pytest.approx(0.5)
    assert metrics["OP_top3"] == pytest.approx(0.5) and metrics["OR_top3"] == pytest.approx(1 / 3)
    # Without a threshold (a model without probabilities): image 1 A B C, image 2 C D A,
    # image 3 C A B. Recall A 1, B 1/2, C 1, D 0: CR 0.625.
    assert th.decisions(probabilities, targets, th.COSINE)["CR_top3"] == pytest.approx(0.625)


def test_a_probability_is_what_asl_bce_focal_and_dbfocal_train():
    assert set(th.PROBABILITY_TERMS) < set(LOSS_TERMS)
    assert {term: th.trains_probabilities([term]) for term in LOSS_TERMS} == {
        "clip": False, "bal": False, "asl": True, "bce": True, "focal": True, "dbfocal": True}
    assert th.decision_score(["clip", "bal"]) == th.COSINE and th.decision_score(["clip", "asl"]) == th.PROBABILITY
    assert th.decision_score(th.PRETRAINING_TERMS) == th.COSINE  # zero-shot CLIP
    reason = th.no_threshold_reason(["clip", "bal"])
    assert "\n" not in reason and "clip + bal does not train sigmoid(logit) as a probability" in reason
    assert "test.py --calibrate" in reason and th.no_threshold_reason(["bce"]) is None


def test_clip_scale_logits_have_no_threshold_rule_unless_trained_as_probabilities():
    rng = np.random.default_rng(0)
    cosines = rng.uniform(0.1, 0.35, (20, 6))
    logits = 100 * cosines  # a CLIP model's class logits, logit scale 100
    targets = (rng.random((20, 6)) < 0.25).astype(int)
    assert (expit(logits) >= 0.5).all()  # a rule at 0.5 would select every class of every image
    bal = th.decision_score(["clip", "bal"])
    values = th.decision_values(bal, torch.tensor(logits), 100.0)
    np.testing.assert_allclose(values, cosines, rtol=1e-12)
    metrics = th.decisions(values, targets, bal)
    assert not any(name in metrics for name in NAMES) and all(f"{name}_top3" in metrics for name in NAMES)
    # A BCE model's sigmoid is its probability: the rule at 0.5 is there (and on these
    # logits it selects everything: recall 1, precision the label density).
    bce = th.decision_score(["clip", "bce"])
    metrics = th.decisions(th.decision_values(bce, logits, 100.0), targets, bce)
    assert metrics["OR"] == 1 and metrics["OP"] == pytest.approx(targets.mean())


def test_predict_refuses_a_fixed_threshold_without_a_probability():
    def predictor(terms):
        return predict.Predictor(torch.nn.Identity(), ["a"], None, torch.device("cpu"), loss_terms=terms)

    predictor(["clip", "bce"]).check_fixed_threshold()  # a probability: accepted
    with pytest.raises(predict.NoProbabilityError, match="--top-k.*test.py --calibrate"):
        predictor(["clip", "bal"]).check_fixed_threshold()


def test_predict_cli_refuses_a_threshold_outside_0_1(capsys):
    parse_args = runpy.run_path(str(REPO / "predict.py"))["parse_args"]
    with pytest.raises(SystemExit) as stop:
        parse_args(["--checkpoint=x.pt", "a.jpg", "--threshold=1.5"])
    assert stop.value.code == 2 and "--threshold must be in [0, 1]" in capsys.readouterr().err


def test_thresholds_file_applies_to_the_model_s_score_within_its_range(tmp_path):
    names = ["cat", "dog"]
    cosine = write_json(tmp_path / "c.json", th.thresholds_document({"cat": 0.25, "dog": 0.3}, th.COSINE, "val.txt",
                                                                    "best.pt", None, {}))
    assert th.read_thresholds(cosine, names, th.COSINE).tolist() == [0.25, 0.3]
    with pytest.raises(th.ThresholdsFileError, match="apply to the cosine, and this model decides by the probability"):
        th.read_thresholds(cosine, names, th.PROBABILITY)
    # The first format (no "score") is on the probability: refused for a model without one.
    first = tmp_path / "first.json"
    first.write_text(json.dumps({"classes": names, "thresholds": [0.5, 0.5]}))
    assert th.read_thresholds(first, names, th.PROBABILITY).tolist() == [0.5, 0.5]
    with pytest.raises(th.ThresholdsFileError, match="calibrate again"):
        th.read_thresholds(first, names, th.COSINE)
    outside = write_json(tmp_path / "o.json", th.thresholds_document({"cat": 0.2, "dog": 1.5}, th.PROBABILITY,
                                                                      "val.txt", "best.pt", None, {}))
    with pytest.raises(th.ThresholdsFileError, match=r"class 'dog': threshold 1.5 is outside \[0, 1\]"):
        th.read_thresholds(outside, names, th.PROBABILITY)


def test_calibration_without_positives_keeps_the_score_s_fallback():
    values = np.array([[0.3, 0.2], [0.1, 0.25]])
    thresholds, notes = th.calibrate(values, np.array([[1, 0], [0, 0]]), th.COSINE)
    assert thresholds.tolist() == [0.3, 1.0] and "kept the threshold 1" in notes[1]


def test_map_carries_both_conventions_for_a_class_without_positives():
    rng = np.random.default_rng(3)
    targets = (rng.random((8, 5)) < 0.4).astype(int)
    targets[:, 4] = 0
    scores = rng.random((8, 5))
    groups = {"head": [0, 1], "medium": [2], "tail": [3, 4]}
    with pytest.warns(UserWarning, match=r"classes \[4\] have no positive image"):
        result = evaluate(scores, targets, groups)
    per_class = [average_precision_score(targets[:, c], scores[:, c]) for c in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's own "No positive class found"
        counted = average_precision_score(targets, scores, average="macro")
        tail = average_precision_score(targets[:, [3, 4]], scores[:, [3, 4]], average="macro")
    assert result["mAP"] == pytest.approx(np.mean(per_class))  # left out
    assert result["mAP_empty_as_0"] == pytest.approx(counted)  # counted as 0, as scikit-learn does
    assert result["mAP_tail"] == pytest.approx(per_class[3]) and result["mAP_tail_empty_as_0"] == pytest.approx(tail)
    assert result["mAP_head_empty_as_0"] == result["mAP_head"]
    assert "mAP_empty_as_0" not in evaluate(scores[:, :4], targets[:, :4])
