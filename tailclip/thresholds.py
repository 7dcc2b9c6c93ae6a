"""From ranking to decisions: precision, recall and F1 of thresholded predictions, and
per-class thresholds chosen on a calibration split.

A class is predicted for an image when its probability, the sigmoid of its class logit
(what the BAL, ASL and BCE terms train, whatever ``score`` ranks with), is at least the
threshold: ``p >= t``. At top-3, each image's 3 highest-scoring classes are predicted.

The metrics follow the protocol of ML-GCN and ASL: CP and CR are the means over classes of
the per-class precision and recall (scikit-learn's ``average="macro"``), OP and OR are
computed over all (image, class) pairs at once (``average="micro"``); CF1 is the harmonic mean
of CP and CR (ML-GCN's definition, not scikit-learn's macro F1, the mean of per-class F1s) and
OF1 that of OP and OR. A class with no predicted image has precision 0 and one without a
positive image recall 0, as scikit-learn's ``zero_division=0``; every class counts in the
means. Values are fractions in [0, 1].
"""
import json
from pathlib import Path

import numpy as np
import torch
from scipy.special import expit

from tailclip.errors import TailCLIPError

DEFAULT_THRESHOLD = 0.5
TOP_K = 3
# What a threshold applies to, as the files say: a per-class probability whatever the ranking
# score. A softmax's scores share one unit of mass, so a threshold on them could select only a
# few classes; the sigmoid of each class logit is what the BAL / ASL / BCE terms train.
PROBABILITY = "sigmoid of the class logits"
SUMMARY_NAMES = ("CP", "CR", "CF1", "OP", "OR", "OF1")
DEFINITIONS = ("CP, CR: means over classes of the per-class precision and recall (scikit-learn's "
               "macro); OP, OR: over all (image, class) pairs (micro); CF1 = 2 CP CR / (CP + CR) "
               "(ML-GCN's), OF1 likewise; precision 0 for a class never predicted, recall 0 for a "
               "class without positives (zero_division=0)")
GROUP_NAMES = ("CP", "CR", "CF1")


class ThresholdsFileError(TailCLIPError):
    """A thresholds file that cannot be read, or whose classes are not the model's."""


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def class_probabilities(logits) -> np.ndarray:
    """float64 [N, C]: the sigmoid of the class logits, what thresholds apply to."""
    return expit(_numpy(logits))


def top_k_predictions(logits, k: int = TOP_K) -> np.ndarray:
    """bool [N, C]: each image's ``k`` highest-scoring classes (ties: the lower class index)."""
    logits = _numpy(logits)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    predicted = np.zeros(logits.shape, dtype=bool)
    np.put_along_axis(predicted, order, True, axis=1)
    return predicted


def _ratio(numerator, denominator):
    """``numerator / denominator``, 0 where the denominator is 0 (``zero_division=0``)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _harmonic(p, r) -> float:
    return float(_ratio(2 * p * r, p + r))


def decision_metrics(predicted, targets, groups=None) -> dict:
    """CP, CR, CF1, OP, OR, OF1 of boolean predictions [N, C] against binary targets [N, C];
    ``CP_<group>``, ``CR_<group>``, ``CF1_<group>`` over each group's classes (NaN for a
    group without classes); and the
    per-class ``P``, ``R``, ``F1`` lists (F1 per class: the harmonic mean of its P and R)."""
    predicted, targets = np.asarray(predicted, bool), _numpy(targets) > 0.5
    true_pos = (predicted & targets).sum(0)
    predicted_pos, actual_pos = predicted.sum(0), targets.sum(0)
    precision, recall = _ratio(true_pos, predicted_pos), _ratio(true_pos, actual_pos)
    f1 = _ratio(2 * precision * recall, precision + recall)

    def macro(classes) -> dict:
        if not classes:  # an empty group, as its mAP is
            return {"CP": float("nan"), "CR": float("nan"), "CF1": float("nan")}
        cp, cr = float(precision[classes].mean()), float(recall[classes].mean())
        return {"CP": cp, "CR": cr, "CF1": _harmonic(cp, cr)}

    op = float(_ratio(true_pos.sum(), predicted_pos.sum()))
    orr = float(_ratio(true_pos.sum(), actual_pos.sum()))
    result = {**macro(list(range(targets.shape[1]))), "OP": op, "OR": orr, "OF1": _harmonic(op, orr)}
    for group, classes in (groups or {}).items():
        result.update({f"{name}_{group}": value for name, value in macro(list(classes)).items()})
    result.update({"P": precision.tolist(), "R": recall.tolist(), "F1": f1.tolist()})
    return result


def threshold_metrics(logits, targets, groups=None, thresholds=DEFAULT_THRESHOLD) -> dict:
    """``decision_metrics`` at ``thresholds`` (one for all classes, or one per class) on the
    class probabilities, and at top-3 (keys with the suffix ``_top3``)."""
    at_threshold = decision_metrics(class_probabilities(logits) >= _numpy(thresholds), targets, groups)
    top = decision_metrics(top_k_predictions(logits), targets, groups)
    return {**at_threshold, **{f"{name}_top{TOP_K}": value for name, value in top.items()}}


def per_class(metrics: dict, class_names) -> dict:
    """``{class name: {"P", "R", "F1"}}`` from ``decision_metrics``' lists."""
    return {name: {key: metrics[key][c] for key in ("P", "R", "F1")} for c, name in enumerate(class_names)}


def split_top_k(metrics: dict) -> tuple[dict, dict]:
    """``threshold_metrics``' result as (at the threshold, at top-3 without the suffix)."""
    suffix = f"_top{TOP_K}"
    return ({k: v for k, v in metrics.items() if not k.endswith(suffix)},
            {k.removesuffix(suffix): v for k, v in metrics.items() if k.endswith(suffix)})


def scalar_metrics(metrics: dict) -> dict:
    """``metrics`` without the per-class lists."""
    return {name: value for name, value in metrics.items() if not isinstance(value, list)}


def calibrate(probabilities, targets, target_precision: float | None = None,
              default: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, dict]:
    """Per-class thresholds [C] and ``{class index: why it kept another threshold}``.

    The candidates of a class are its probabilities on the split (``p >= t`` predicts).
    Without ``target_precision``: the one with the highest F1, the highest such threshold on
    a tie. With it: the lowest threshold whose precision reaches ``target_precision`` (the
    largest recall at that precision); a class where none does keeps its F1-maximising
    threshold, and is named in the returned notes. A class without a positive image on the
    split keeps ``default``.
    """
    probabilities, targets = _numpy(probabilities), _numpy(targets) > 0.5
    thresholds, notes = np.full(probabilities.shape[1], float(default)), {}
    for c in range(probabilities.shape[1]):
        positives = int(targets[:, c].sum())
        if positives == 0:
            notes[c] = f"no positive image: kept the global threshold {default:g}"
            continue
        order = np.argsort(-probabilities[:, c], kind="stable")
        scores, hits = probabilities[order, c], targets[order, c]
        # The last position of each distinct score: thresholding there predicts all up to it.
        last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
        true_pos, predicted = np.cumsum(hits)[last], last + 1
        precision = true_pos / predicted
        f1 = 2 * true_pos / (predicted + positives)
        best_f1 = int(np.argmax(f1))  # the first maximum: the highest threshold
        choice = best_f1
        if target_precision is not None:
            reaching = np.flatnonzero(precision >= target_precision)
            if reaching.size:
                choice = int(reaching[-1])
            else:
                notes[c] = (f"no threshold reaches precision {target_precision:g} (best "
                            f"{precision.max():.3f}): kept the F1-maximising threshold")
        thresholds[c] = scores[last[choice]]
    return thresholds, notes


def selected_classes(probabilities, class_names, thresholds) -> list[tuple[str, float]]:
    """``(class, probability)`` of one image's classes at or above ``thresholds`` (one for
    all classes, or one per class), most probable first."""
    probabilities = _numpy(probabilities)
    chosen = np.flatnonzero(probabilities >= _numpy(thresholds))
    chosen = chosen[np.argsort(-probabilities[chosen], kind="stable")]
    return [(class_names[c], float(probabilities[c])) for c in chosen]


def thresholds_file_name(checkpoint: str | Path) -> str:
    return f"thresholds_{Path(checkpoint).stem}.json"


def thresholds_document(thresholds: dict, split: str, checkpoint: str,
                        target_precision: float | None, notes: dict) -> dict:
    """The thresholds file's contents: ``thresholds`` ``{class name: threshold}`` in class
    order, with where they came from and ``notes`` ``{class name: why it kept another
    threshold}``; `read_thresholds` reads them back."""
    return {
        "checkpoint": str(checkpoint),
        "split": str(split),
        "probability": PROBABILITY,
        "criterion": ("max F1" if target_precision is None
                      else f"lowest threshold with precision >= {target_precision:g}"),
        "target_precision": target_precision,
        "classes": list(thresholds),
        "thresholds": [float(t) for t in thresholds.values()],
        "notes": notes,
    }


def read_thresholds(path, class_names) -> torch.Tensor:
    """float64 [C] thresholds from a thresholds file, refused unless its classes are
    ``class_names`` in the same order."""
    try:
        document = json.loads(Path(path).read_text())
        classes, thresholds = list(document["classes"]), [float(t) for t in document["thresholds"]]
    except FileNotFoundError:
        raise ThresholdsFileError(f"thresholds file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ThresholdsFileError(f"{path} is not a thresholds file written by test.py "
                                  f"--calibrate ({type(error).__name__}: {error})") from None
    if len(classes) != len(thresholds):
        raise ThresholdsFileError(f"{path}: {len(classes)} classes but {len(thresholds)} thresholds")
    if classes != list(class_names):
        differ = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(classes, class_names)) if a != b]
        detail = (f"{len(classes)} classes, the checkpoint has {len(class_names)}"
                  if len(classes) != len(class_names) else "first difference " + differ[0])
        raise ThresholdsFileError(f"{path}: its classes are not the checkpoint's ({detail})")
    return torch.tensor(thresholds, dtype=torch.float64)
