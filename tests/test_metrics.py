"""Tests of tailclip.metrics against scikit-learn and hand-computed values."""
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from tailclip.metrics import evaluate, pd_nd_ratio, scores_from_logits, subset_metrics


def test_average_precision_by_hand():
    # Ranked 1 0 1 0: precision at the two positives is 1/1 and 2/3.
    scores = np.array([[0.9], [0.8], [0.7], [0.6]])
    targets = np.array([[1], [0], [1], [0]])
    assert evaluate(scores, targets)["AP"][0] == pytest.approx((1 + 2 / 3) / 2)
    # Tied scores form one threshold: {0.5, 0.5} gives P = 1/2 at R = 1/2, then P = 2/3 at R = 1.
    scores = np.array([[0.5], [0.5], [0.1]])
    targets = np.array([[1], [0], [1]])
    assert evaluate(scores, targets)["AP"][0] == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)


def test_evaluate_equals_sklearn_with_ties_and_a_class_without_positives():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, size=(60, 7)) / 4  # five distinct values: many ties
    targets = (rng.random((60, 7)) < 0.3).astype(int)
    targets[:, 3] = 0  # no positive: left out
    targets[:, 5] = 1  # no negative: AP defined, AUROC left out
    with pytest.warns(UserWarning, match=r"classes \[3\] have no positive"):
        result = evaluate(torch.tensor(scores), torch.tensor(targets), None)
    expected_ap = [average_precision_score(targets[:, c], scores[:, c]) for c in range(7) if c != 3]
    ap = result["AP"]
    assert math.isnan(ap[3])
    assert [ap[c] for c in range(7) if c != 3] == pytest.approx(expected_ap, abs=1e-12)
    assert result["mAP"] == pytest.approx(np.mean(expected_ap), abs=1e-12)
    expected_auroc = [roc_auc_score(targets[:, c], scores[:, c]) for c in range(7) if c not in (3, 5)]
    assert result["AUROC"] == pytest.approx(np.mean(expected_auroc), abs=1e-12)
    # The other convention beside it: the class counted as AP 0 (test_decision_rules.py).
    assert set(result) == {"mAP", "AUROC", "AP", "mAP_empty_as_0"}


def test_group_means_by_hand():
    targets = np.array([[1, 0, 1, 0], [0, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0]])
    scores = np.array([
        [0.9, 0.1, 0.8, 0.5],
        [0.1, 0.8, 0.7, 0.5],
        [0.6, 0.2, 0.1, 0.5],
        [0.7, 0.3, 0.9, 0.5],
    ])
    # class 0: ranked 0.9(+) 0.7(-) 0.6(+) 0.1(-) -> (1 + 2/3) / 2
    # class 1: ranked 0.8(+) 0.3(-) 0.2(+) 0.1(-) -> (1 + 2/3) / 2
    # class 2: ranked 0.9(+) 0.8(+) 0.7(-) 0.1(-) -> 1; class 3: no positive
    ap0 = ap1 = (1 + 2 / 3) / 2
    groups = {"head": [0, 2], "medium": [1], "tail": [3]}
    with pytest.warns(UserWarning, match=r"\[3\]"):
        result = evaluate(scores, targets, groups)
    assert result["AP"][:3] == pytest.approx([ap0, ap1, 1.0])
    assert result["mAP"] == pytest.approx((ap0 + ap1 + 1.0) / 3)
    assert result["mAP_head"] == pytest.approx((ap0 + 1.0) / 2)
    assert result["mAP_medium"] == pytest.approx(ap1)
    assert math.isnan(result["mAP_tail"])  # its only class has no positive


def test_evaluate_rejects_bad_input():
    with pytest.raises(ValueError, match="does not match"):
        evaluate(np.zeros((3, 2)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="binary"):
        evaluate(np.zeros((2, 2)), np.array([[0, 2], [1, 0]]))
    with pytest.raises(ValueError, match="NaN"):
        evaluate(np.array([[np.nan, 0.0]]), np.array([[1, 0]]))
    with pytest.raises(ValueError, match="outside"):
        evaluate(np.zeros((2, 2)), np.eye(2), {"head": [0, 2]})
    with pytest.raises(ValueError, match="images, classes"):
        evaluate(np.zeros(3), np.zeros(3))


def test_subset_metrics_split_single_and_multi_label_images():
    rng = np.random.default_rng(1)
    targets = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0],
                        [1, 0, 0], [0, 0, 1], [0, 1, 0]])
    scores = rng.random(targets.shape)
    groups = {"head": [0], "medium": [1], "tail": [2]}
    result = subset_metrics(scores, targets, groups)
    multi, single = [1, 3, 5], [0, 2, 4, 7, 8, 9]  # row 6 has no label: in neither
    assert result["multi_label"] == evaluate(scores[multi], targets[multi], groups)
    assert result["single_label"] == evaluate(scores[single], targets[single], groups)


def test_scores_from_logits():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, -1.0, 4.0]])
    softmax = scores_from_logits(logits, "softmax")
    assert torch.allclose(softmax.sum(dim=1), torch.ones(2))
    row = [math.exp(v) for v in (1.0, 2.0, 3.0)]
    assert softmax[0].tolist() == pytest.approx([v / sum(row) for v in row])
    assert scores_from_logits(logits, "sigmoid")[1, 1].item() == pytest.approx(1 / (1 + math.e))
    assert torch.equal(scores_from_logits(logits, "logits"), logits)
    as_numpy = scores_from_logits(logits.numpy(), "softmax")
    assert isinstance(as_numpy, np.ndarray) and np.allclose(as_numpy, softmax.numpy())
    assert scores_from_logits(logits.to(torch.bfloat16), "softmax").dtype == torch.float32
    with pytest.raises(ValueError, match="'probit'.*softmax"):
        scores_from_logits(logits, "probit")


def test_pd_nd_ratio_on_a_hand_made_2d_example():
    # Normalised: A = (1, 0), D = (0, 1), B = (0, 1), E = (-1, 0); class 3 has no image.
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 3.0], [-1.0, 0.0]])
    targets = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]])
    # Centroids: class 0 (0.5, 0.5), class 1 (0, 1), class 2 (-1, 0).
    r2, rh, r52 = math.sqrt(2), math.sqrt(0.5), math.sqrt(2.5)
    # Positive pairs: A-0 rh, D-0 rh, D-1 0, B-1 0, E-2 0.
    pd = 2 * rh / 5
    # Negative pairs: A-1 r2, A-2 2, D-2 r2, B-0 rh, B-2 r2, E-0 r52, E-1 r2.
    nd = (4 * r2 + 2 + rh + r52) / 7
    groups = {"head": [0], "tail": [1, 2, 3]}
    result = pd_nd_ratio(embeddings, targets, groups)
    assert result["PD"] == pytest.approx(pd)
    assert result["ND"] == pytest.approx(nd)
    assert result["PD_ND"] == pytest.approx(pd / nd)
    # head: positives A-0, D-0; negatives B-0, E-0.
    assert result["PD_head"] == pytest.approx(rh)
    assert result["ND_head"] == pytest.approx((rh + r52) / 2)
    assert result["PD_ND_head"] == pytest.approx(rh / ((rh + r52) / 2))
    # tail: positives D-1, B-1, E-2 (all 0); negatives, D-2, B-2, E-1.
    assert result["PD_tail"] == pytest.approx(0.0)
    assert result["ND_tail"] == pytest.approx((4 * r2 + 2) / 5)
    assert result["PD_ND_tail"] == pytest.approx(0.0)


def test_pd_nd_ratio_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="3 embeddings but 2 rows"):
        pd_nd_ratio(np.ones((3, 2)), np.ones((2, 2)))
