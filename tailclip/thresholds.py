"""From ranking to decisions: precision, recall and F1 of thresholded predictions, and
per-class thresholds chosen on a calibration split.

A threshold applies to a per-class score whose scale training fixed, the model's
`DecisionScore` (`decision_score` of its loss terms, the one rule for every tool):

- ``probability``, the sigmoid of the class logit, for a model that a term trained to make
  it a probability (`PROBABILITY_TERMS`: bce, focal, dbfocal, asl). The fixed threshold 0.5
  (``p >= 0.5``) means something there, and is a decision rule.
- ``cosine``, the class logit divided by the logit scale, for the others (TailCLIP's clip +
  bal, clip alone, zero-shot CLIP). Their sigmoid is no probability: BAL trains
  sigmoid(logit / its maximum over the batch), the contrastive term a softmax over captions,
  and a CLIP model's logits (logit scale 100 times the cosine) are about 10-35, whose
  sigmoid is ~1 for every class. No fixed threshold is a rule there; the rules are top-3
  and per-class thresholds calibrated on a held-out split. The cosine keeps the ranking of
  the logits in the range [-1, 1] whatever temperature training learnt, where the sigmoid
  of 100 x cosine rounds to 1.0 (float64) for every cosine above 0.37.

The metrics follow ML-GCN's code (Chen et al., CVPR 2019), which ASL's papers report too:
CP and CR are the means over classes of the per-class precision and recall; OP and OR are
computed over all (image, class) pairs at once; CF1 is the harmonic mean of CP and CR (not
the mean of per-class F1s) and OF1 that of OP and OR. A class never predicted has precision 0
and counts as one prediction in OP's denominator (ML-GCN's ``Np[Np == 0] = 1``). Top-3
predicts one of an image's 3 highest-scoring classes only where it also passes the threshold
0.5 (ML-GCN's ``overall_topk``); a model without a probability has no such threshold, and its
top-3 is the 3 highest classes alone. One difference: a class without a positive image has
recall 0 (scikit-learn's ``zero_division=0``), where ML-GCN divides by zero and its CR is NaN.
Every class counts in the means. Values are fractions in [0, 1].
"""
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch

from tailclip.config import CONTRASTIVE_TERM
from tailclip.errors import TailCLIPError

DEFAULT_THRESHOLD = 0.5
TOP_K = 3
# The terms that train sigmoid(logit) itself as each class's probability.
PROBABILITY_TERMS = ("asl", "bce", "focal", "dbfocal")
PRETRAINING_TERMS = (CONTRASTIVE_TERM,)  # what trained zero-shot CLIP's weights


@dataclasses.dataclass(frozen=True)
class DecisionScore:
    """The per-class score thresholds apply to: its name, what it is, its range [low, high],
    and the threshold of a class the calibration split has no positive image of."""
    name: str
    meaning: str
    low: float
    high: float
    fallback: float


PROBABILITY = DecisionScore("probability", "sigmoid of the class logits", 0.0, 1.0, DEFAULT_THRESHOLD)
COSINE = DecisionScore("cosine", "cosine similarity of image and class prompt (class logit / logit scale)",
                       -1.0, 1.0, 1.0)
DECISION_SCORES = {score.name: score for score in (PROBABILITY, COSINE)}
SUMMARY_NAMES = ("CP", "CR", "CF1", "OP", "OR", "OF1")
DEFINITIONS = ("ML-GCN's: CP, CR: means over classes of the per-class precision and recall; OP, OR: "
               "over all (image, class) pairs; CF1 = 2 CP CR / (CP + CR), OF1 likewise; a class never "
               "predicted has precision 0 and counts one prediction in OP; top-3 predicts an image's 3 "
               "highest classes that also pass the threshold (all 3 without one); recall 0 for a class "
               "without positives (ML-GCN: NaN)")


def trains_probabilities(loss_terms) -> bool:
    """Whether one of ``loss_terms`` trains the sigmoid of each class logit as a probability."""
    return any(term in PROBABILITY_TERMS for term in loss_terms)


def decision_score(loss_terms) -> DecisionScore:
    """What thresholds apply to for a model trained with ``loss_terms``."""
    return PROBABILITY if trains_probabilities(loss_terms) else COSINE


def no_threshold_reason(loss_terms) -> str | None:
    """Why the fixed threshold 0.5 is no decision rule for a model trained with
    ``loss_terms``, in one line; None where it is."""
    if trains_probabilities(loss_terms):
        return None
    return (f"no decisions at the threshold {DEFAULT_THRESHOLD:g}: {' + '.join(loss_terms)} does not train "
            f"sigmoid(logit) as a probability ({', '.join(PROBABILITY_TERMS)} do); decide by top-{TOP_K} "
            "or by per-class thresholds from test.py --calibrate")


def decision_values(score: DecisionScore, logits, logit_scale: float) -> np.ndarray:
    """float64 [N, C]: ``score`` of the class logits [N, C] of a model whose (exponentiated)
    logit scale is ``logit_scale``."""
    from scipy.special import expit  # imported at first use: scipy's import slows every start-up

    logits = _numpy(logits)
    return expit(logits) if score == PROBABILITY else logits / float(logit_scale)


class ThresholdsFileError(TailCLIPError):
    """A thresholds file that cannot be read, or whose classes are not the model's."""


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def top_k_predictions(values, k: int = TOP_K, threshold: float | None = None) -> np.ndarray:
    """bool [N, C]: each image's ``k`` highest-scoring classes (ties: the lower class index),
    only those at or above ``threshold`` when given (ML-GCN's ``overall_topk``)."""
    values = _numpy(values)
    order = np.argsort(-values, axis=1, kind="stable")[:, :k]
    predicted = np.zeros(values.shape, dtype=bool)
    np.put_along_axis(predicted, order, True, axis=1)
    return predicted if threshold is None else predicted & (values >= threshold)


def _ratio(numerator, denominator):
    """``numerator / denominator``, 0 where the denominator is 0 (``zero_division=0``)."""
    numerator, denominator = np.asarray(numerator, float), np.asarray(denominator, float)
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


def _harmonic(p, r) -> float:
    return float(_ratio(2 * p * r, p + r))


def decision_metrics(predicted, targets, groups=None) -> dict:
    """CP, CR, CF1, OP, OR, OF1 of boolean predictions [N, C] against binary targets [N, C];
    ``CP_<group>``, ``CR_<group>``, ``CF1_<group>`` over each group's classes (NaN for a
    group without classes); and the per-class ``P``, ``R``, ``F1`` lists (F1 per class: the
    harmonic mean of its P and R)."""
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

    op = float(_ratio(true_pos.sum(), np.maximum(predicted_pos, 1).sum()))  # ML-GCN: Np[Np == 0] = 1
    orr = float(_ratio(true_pos.sum(), actual_pos.sum()))
    result = {**macro(list(range(targets.shape[1]))), "OP": op, "OR": orr, "OF1": _harmonic(op, orr)}
    for group, classes in (groups or {}).items():
        result.update({f"{name}_{group}": value for name, value in macro(list(classes)).items()})
    result.update({"P": precision.tolist(), "R": recall.tolist(), "F1": f1.tolist()})
    return result


def decisions(values, targets, score: DecisionScore, groups=None) -> dict:
    """The decision metrics ``score``'s values [N, C] support: for a probability, at
    `DEFAULT_THRESHOLD` and at top-3 among the classes that pass it; otherwise at top-3
    alone (keys with the suffix ``_top3``)."""
    threshold = DEFAULT_THRESHOLD if score == PROBABILITY else None
    top = decision_metrics(top_k_predictions(values, TOP_K, threshold), targets, groups)
    at_threshold = ({} if threshold is None
                    else decision_metrics(_numpy(values) >= threshold, targets, groups))
    return {**at_threshold, **{f"{name}_top{TOP_K}": value for name, value in top.items()}}


def per_class(metrics: dict, class_names) -> dict:
    """``{class name: {"P", "R", "F1"}}`` from ``decision_metrics``' lists."""
    return {name: {key: metrics[key][c] for key in ("P", "R", "F1")} for c, name in enumerate(class_names)}


def split_top_k(metrics: dict) -> tuple[dict, dict]:
    """``decisions``' result as (at the threshold, at top-3 without the suffix); the first
    is empty for a model without a probability."""
    suffix = f"_top{TOP_K}"
    return ({k: v for k, v in metrics.items() if not k.endswith(suffix)},
            {k.removesuffix(suffix): v for k, v in metrics.items() if k.endswith(suffix)})


def scalar_metrics(metrics: dict) -> dict:
    """``metrics`` without the per-class lists."""
    return {name: value for name, value in metrics.items() if not isinstance(value, list)}


def calibrate(values, targets, score: DecisionScore, target_precision: float | None = None
              ) -> tuple[np.ndarray, dict]:
    """Per-class thresholds [C] on ``score``'s values [N, C] and ``{class index: why it kept
    another threshold}``.

    The candidates of a class are its values on the split (``value >= t`` predicts).
    Without ``target_precision``: the one with the highest F1, the highest such threshold on
    a tie. With it: the lowest threshold whose precision reaches ``target_precision`` (the
    largest recall at that precision); a class where none does keeps its F1-maximising
    threshold, and is named in the returned notes. A class without a positive image on the
    split keeps ``score.fallback``.
    """
    values, targets = _numpy(values), _numpy(targets) > 0.5
    thresholds, notes = np.full(values.shape[1], score.fallback), {}
    for c in range(values.shape[1]):
        positives = int(targets[:, c].sum())
        if positives == 0:
            notes[c] = f"no positive image: kept the threshold {score.fallback:g}"
            continue
        order = np.argsort(-values[:, c], kind="stable")
        scores, hits = values[order, c], targets[order, c]
        # The last position of each distinct score: thresholding there predicts all up to it.
        last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
        true_pos, predicted = np.cumsum(hits)[last], last + 1
        precision = true_pos / predicted
        f1 = 2 * true_pos / (predicted + positives)
        choice = int(np.argmax(f1))  # the first maximum: the highest threshold
        if target_precision is not None:
            reaching = np.flatnonzero(precision >= target_precision)
            if reaching.size:
                choice = int(reaching[-1])
            else:
                notes[c] = (f"no threshold reaches precision {target_precision:g} (best "
                            f"{precision.max():.3f}): kept the F1-maximising threshold")
        thresholds[c] = scores[last[choice]]
    return thresholds, notes


def selected_classes(values, class_names, thresholds) -> list[tuple[str, float]]:
    """``(class, value)`` of one image's classes whose value [C] is at or above
    ``thresholds`` (one for all classes, or one per class), highest first."""
    values = _numpy(values)
    chosen = np.flatnonzero(values >= _numpy(thresholds))
    chosen = chosen[np.argsort(-values[chosen], kind="stable")]
    return [(class_names[c], float(values[c])) for c in chosen]


def thresholds_file_name(checkpoint: str | Path) -> str:
    return f"thresholds_{Path(checkpoint).stem}.json"


def thresholds_document(thresholds: dict, score: DecisionScore, split: str, checkpoint: str,
                        target_precision: float | None, notes: dict) -> dict:
    """The thresholds file's contents: ``thresholds`` ``{class name: threshold}`` on ``score``
    in class order, with where they came from and ``notes`` ``{class name: why it kept
    another threshold}``; `read_thresholds` reads them back."""
    return {
        "checkpoint": str(checkpoint),
        "split": str(split),
        "score": score.name,
        "score_meaning": score.meaning,
        "criterion": ("max F1" if target_precision is None
                      else f"lowest threshold with precision >= {target_precision:g}"),
        "target_precision": target_precision,
        "classes": list(thresholds),
        "thresholds": [float(t) for t in thresholds.values()],
        "notes": notes,
    }


def read_thresholds(path, class_names, score: DecisionScore) -> torch.Tensor:
    """float64 [C] thresholds from a thresholds file, refused unless its classes are
    ``class_names`` in the same order and its thresholds apply to ``score`` (the model's)
    within its range. A file without a ``score`` is on the probability (the first format)."""
    try:
        document = json.loads(Path(path).read_text())
        classes, thresholds = list(document["classes"]), [float(t) for t in document["thresholds"]]
        file_score = document.get("score", PROBABILITY.name)
    except FileNotFoundError:
        raise ThresholdsFileError(f"thresholds file not found: {path}") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ThresholdsFileError(f"{path} is not a thresholds file written by test.py "
                                  f"--calibrate ({type(error).__name__}: {error})") from None
    if len(classes) != len(thresholds):
        raise ThresholdsFileError(f"{path}: {len(classes)} classes but {len(thresholds)} thresholds")
    if classes != list(class_names):
        differ = [f"{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(classes, class_names)) if a != b]
        detail = (f"{len(classes)} classes, the checkpoint has {len(class_names)}"
                  if len(classes) != len(class_names) else "first difference " + differ[0])
        raise ThresholdsFileError(f"{path}: its classes are not the checkpoint's ({detail})")
    if file_score != score.name:
        raise ThresholdsFileError(f"{path}: its thresholds apply to the {file_score}, and this model decides by "
                                  f"the {score.name} ({score.meaning}); calibrate again with test.py --calibrate")
    for name, threshold in zip(classes, thresholds):  # outside, it would select every image or none
        if not score.low <= threshold <= score.high:
            raise ThresholdsFileError(f"{path}: class {name!r}: threshold {threshold:g} is outside [{score.low:g}, "
                                      f"{score.high:g}], the range of the {score.name} ({score.meaning})")
    return torch.tensor(thresholds, dtype=torch.float64)
