"""Evaluation metrics of the long-tailed multi-label benchmarks.

Average precision and AUROC per class are scikit-learn's (``average_precision_score``:
no interpolation, tied scores form one threshold). Every value is a fraction in [0, 1].
Inputs may be torch tensors or numpy arrays; ``groups`` is
``{"head": [...], "medium": [...], "tail": [...]}`` as ``tailclip.data.class_groups`` gives.
"""
import warnings

import numpy as np
import torch

from tailclip.config import SCORE_KINDS
from tailclip.data.balance import GROUPS

# mAP over every class, then over each group's classes: the figures a run is judged by.
MAP_NAMES = ("mAP", *(f"mAP_{group}" for group in GROUPS))
MAP_LABELS = {"mAP": "mAP", **{f"mAP_{group}": group for group in GROUPS}}  # in tables and legends


def _numpy(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().float().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape [images, classes], got {x.shape}")
    return x


def _scores_and_targets(scores, targets):
    scores, targets = _numpy(scores, "scores"), _numpy(targets, "targets")
    if scores.shape != targets.shape:
        raise ValueError(f"scores shape {scores.shape} does not match targets shape {targets.shape}")
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be binary (0 or 1)")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or inf")
    return scores, targets.astype(np.int64)


def scores_from_logits(logits, kind: str = "softmax"):
    """Scores for ranking: softmax over classes (the paper's choice), sigmoid, or the logits.

    Returns the same type as given (torch tensor or numpy array), in at least float32.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"unknown score kind {kind!r}; known: {list(SCORE_KINDS)}")
    as_numpy = not isinstance(logits, torch.Tensor)
    x = torch.as_tensor(logits)
    x = x.to(torch.promote_types(x.dtype, torch.float32))
    if kind == "softmax":
        x = x.softmax(dim=-1)
    elif kind == "sigmoid":
        x = x.sigmoid()
    return x.numpy() if as_numpy else x


def _group_mean(values: np.ndarray, classes) -> float:
    selected = values[list(classes)]
    selected = selected[np.isfinite(selected)]
    return float(selected.mean()) if selected.size else float("nan")


def group_mAP(ap, groups=None) -> dict:
    """``{"mAP", "mAP_<group>" for each group}`` of the per-class AP [C] (fractions); a class
    whose AP is NaN (no positive image) is left out of every mean, a group with none is NaN."""
    ap = np.asarray(ap, dtype=np.float64)
    return {"mAP": _group_mean(ap, range(len(ap))),
            **{f"mAP_{name}": _group_mean(ap, classes) for name, classes in (groups or {}).items()}}


def _check_groups(groups, num_classes: int) -> None:
    for name, classes in groups.items():
        bad = [c for c in classes if not 0 <= int(c) < num_classes]
        if bad:
            raise ValueError(f"group {name!r} has class indices {bad} outside 0..{num_classes - 1}")


EMPTY_AS_ZERO = "_empty_as_0"  # the suffix of the means that count a class without positives as AP 0


def evaluate(scores, targets, groups=None) -> dict:
    """mAP, AUROC and per-class AP of scores [N, C] against binary targets [N, C].

    Returns ``{"mAP", "mAP_<group>" for each group, "AUROC", "AP": [C floats]}``. A class
    without a positive image is left out of every mean (its AP is NaN) with a warning naming
    it; AUROC also leaves out classes without a negative. Group means average the evaluable
    classes of each group (NaN when none is). Where a class has no positive image, the means
    with it counted as AP 0 (scikit-learn's ``average_precision_score`` and the authors'
    convention) come too: ``"mAP_empty_as_0"`` and ``"mAP_<group>_empty_as_0"``.
    """
    scores, targets = _scores_and_targets(scores, targets)
    num_classes = scores.shape[1]
    positives = targets.sum(axis=0)
    negatives = targets.shape[0] - positives
    # Imported at first use: scikit-learn's import takes a second of every command line's start-up.
    from sklearn.metrics import average_precision_score, roc_auc_score

    ap = np.full(num_classes, np.nan)
    auroc = np.full(num_classes, np.nan)
    for c in range(num_classes):
        if positives[c] > 0:
            ap[c] = average_precision_score(targets[:, c], scores[:, c])
            if negatives[c] > 0:
                auroc[c] = roc_auc_score(targets[:, c], scores[:, c])
    missing = np.flatnonzero(positives == 0).tolist()
    if missing:
        warnings.warn(f"classes {missing} have no positive image; left out of mAP and AUROC "
                      f"(mAP{EMPTY_AS_ZERO} counts them as AP 0)", stacklevel=2)
    if groups is not None:
        _check_groups(groups, num_classes)
    result = group_mAP(ap, groups)
    result["AUROC"] = _group_mean(auroc, range(num_classes))
    if missing:
        result.update({f"{name}{EMPTY_AS_ZERO}": value for name, value in group_mAP(np.nan_to_num(ap), groups).items()})
    result["AP"] = ap.tolist()
    return result


def subset_metrics(scores, targets, groups=None) -> dict:
    """``evaluate`` on the images with at least two labels and on those with exactly one.

    Returns ``{"multi_label": {...}, "single_label": {...}}``.
    """
    scores, targets = _scores_and_targets(scores, targets)
    labels_per_image = targets.sum(axis=1)
    return {
        "multi_label": evaluate(scores[labels_per_image >= 2], targets[labels_per_image >= 2], groups),
        "single_label": evaluate(scores[labels_per_image == 1], targets[labels_per_image == 1], groups),
    }


def _mean_over(distances: np.ndarray, mask: np.ndarray) -> float:
    count = mask.sum()
    return float((distances * mask).sum() / count) if count else float("nan")


def pd_nd_ratio(image_emb, targets, groups=None) -> dict:
    """The P/D ratio analysis of the paper: how close images lie to their own classes.

    Image embeddings [N, D] are L2-normalised; the centroid of class c is the mean embedding
    of its positive images. PD is the mean Euclidean distance over all (image, positive class)
    pairs, ND over all (image, negative class) pairs; ``PD_ND = PD / ND`` (lower is better).
    Classes without a positive image have no centroid and are left out. For a group, only
    the centroids of that group's classes count. Returns ``{"PD", "ND", "PD_ND"}`` plus
    ``"PD_<group>", "ND_<group>", "PD_ND_<group>"`` per group.
    """
    embeddings = _numpy(image_emb, "image_emb")
    targets = _numpy(targets, "targets")
    if embeddings.shape[0] != targets.shape[0]:
        raise ValueError(
            f"{embeddings.shape[0]} embeddings but {targets.shape[0]} rows of targets"
        )
    if not np.isin(targets, (0, 1)).all():
        raise ValueError("targets must be binary (0 or 1)")
    embeddings = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    counts = targets.sum(axis=0)
    centroids = (targets.T @ embeddings) / np.maximum(counts, 1)[:, None]
    from scipy.spatial.distance import cdist  # imported at first use, as scikit-learn in `evaluate`

    distances = cdist(embeddings, centroids)  # [N, C]

    def ratio(columns: np.ndarray, suffix: str) -> dict:
        columns = columns & (counts > 0)
        pd = _mean_over(distances, targets * columns)
        nd = _mean_over(distances, (1 - targets) * columns)
        return {f"PD{suffix}": pd, f"ND{suffix}": nd, f"PD_ND{suffix}": pd / nd if nd else float("nan")}

    num_classes = targets.shape[1]
    result = ratio(np.ones(num_classes, dtype=bool), "")
    if groups is not None:
        _check_groups(groups, num_classes)
        for name, classes in groups.items():
            in_group = np.zeros(num_classes, dtype=bool)
            in_group[list(classes)] = True
            result.update(ratio(in_group, f"_{name}"))
    return result
