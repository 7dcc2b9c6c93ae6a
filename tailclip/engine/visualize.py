"""TensorBoard pictures of an evaluation: per-class AP bars, tail PR curves, HParams.

The bar chart shows one bar per class, coloured by its frequency group, so that a weak tail is
visible at a glance. Bars are ordered head -> medium -> tail (class index order inside a group),
which reads left to right from frequent to rare classes; pass ``class_counts`` (training images
per class) to order them by decreasing frequency instead.

Figures are built as ``matplotlib.figure.Figure`` objects, not through pyplot: they are
rendered by Agg whatever the interactive backend, need no display, and are not kept alive by
pyplot's figure registry between evaluations.
"""
from __future__ import annotations

import contextlib
import functools
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib import font_manager
from matplotlib.figure import Figure
from matplotlib.ft2font import FT2Font
from matplotlib.patches import Patch

from tailclip.data.balance import GROUPS
from tailclip.engine.files import write_figure
from tailclip.metrics import group_mAP
from tailclip.wording import percent

GROUP_COLORS = {"head": "#1f77b4", "medium": "#ff7f0e", "tail": "#d62728"}
UNGROUPED_COLOR = "#7f7f7f"  # a class in none of the groups (should not happen with class_groups)

# TensorBoard's PR-curve plugin stores at most this many operating points per curve.
MAX_PR_POINTS = 127


def _as_numpy(values) -> np.ndarray:
    """Tensor (any device/dtype), array or sequence -> float64 array; None entries become NaN."""
    if isinstance(values, torch.Tensor):
        return values.detach().to(device="cpu", dtype=torch.float64).numpy()
    if isinstance(values, (list, tuple)):
        values = [np.nan if value is None else value for value in values]
    return np.asarray(values, dtype=np.float64)


def class_group_of(groups: Mapping[str, Sequence[int]], num_classes: int) -> list[str | None]:
    """The group name of every class index (None for a class in no group)."""
    group_of: list[str | None] = [None] * num_classes
    for name in GROUPS:
        for index in groups.get(name, ()):
            if not 0 <= index < num_classes:
                raise ValueError(f"group {name!r} holds class index {index}, "
                                 f"outside 0..{num_classes - 1}")
            group_of[index] = name
    return group_of


@functools.lru_cache(maxsize=1)
def _font_characters() -> frozenset[str]:
    """The characters of the font the charts are drawn in (matplotlib's default)."""
    font = FT2Font(font_manager.findfont(font_manager.FontProperties()))
    return frozenset(map(chr, font.get_charmap()))


_reported_characters: set[str] = set()


@contextlib.contextmanager
def _missing_characters_said_once(texts: Sequence[str]):
    """Render without matplotlib's warning per missing glyph and per drawing (ten or more for
    each evaluation of non-Latin class names); one warning names, once per process, the
    characters the chart font lacks."""
    missing = sorted({char for text in texts for char in text if not char.isspace()}
                     - _font_characters() - _reported_characters)
    if missing:
        _reported_characters.update(missing)
        warnings.warn(f"the charts' font lacks {len(missing)} characters of the class names "
                      f"({''.join(missing[:20])}{'...' if len(missing) > 20 else ''}); they are drawn "
                      "as empty boxes (the names are intact in every file)", stacklevel=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font")
        yield


def per_class_ap_figure(ap, class_names: Sequence[str], groups: Mapping[str, Sequence[int]],
                        class_counts=None, title: str | None = None) -> Figure:
    """Bar chart of the average precision of every class, coloured by head/medium/tail.

    ap: per-class AP as fractions in [0, 1] (tensor, array or list; NaN or None for a class
    with no positive test image, drawn as an empty bar marked "n/a"). groups: the
    ``class_groups`` dict of sorted class indices. class_counts: optional training images per
    class; when given, bars are sorted by decreasing count (ties by class index), otherwise by
    group then class index. The title gives mAP overall and per group in percent, prefixed by
    ``title`` when given. Returns a figure with exactly one bar (Rectangle patch) per class.
    """
    ap = _as_numpy(ap)
    num_classes = len(class_names)
    if ap.shape != (num_classes,):
        raise ValueError(f"ap has shape {tuple(ap.shape)}, expected ({num_classes},) "
                         f"for {num_classes} class names")
    group_of = class_group_of(groups, num_classes)
    if class_counts is not None:
        counts = _as_numpy(class_counts)
        order = sorted(range(num_classes), key=lambda c: (-counts[c], c))
    else:
        rank = {name: i for i, name in enumerate(GROUPS)}
        order = sorted(range(num_classes), key=lambda c: (rank.get(group_of[c], len(GROUPS)), c))

    heights = np.nan_to_num(ap[order], nan=0.0) * 100
    colors = [GROUP_COLORS.get(group_of[c], UNGROUPED_COLOR) for c in order]
    figure = Figure(figsize=(max(6.0, 0.22 * num_classes + 2.0), 4.5), layout="constrained")
    axes = figure.add_subplot()
    positions = np.arange(num_classes)
    axes.bar(positions, heights, color=colors, width=0.8)
    for position, c in zip(positions, order):
        if np.isnan(ap[c]):
            axes.text(position, 1, "n/a", ha="center", va="bottom", rotation=90, fontsize=7)
    axes.set_xticks(positions, [class_names[c] for c in order], rotation=90, fontsize=8)
    axes.set_xlim(-0.6, num_classes - 0.4)
    axes.set_ylim(0, 100)
    axes.set_ylabel("AP (%)")
    axes.grid(axis="y", alpha=0.3)

    means = group_mAP(ap, {name: groups.get(name, ()) for name in GROUPS})
    axes.legend(handles=[Patch(color=GROUP_COLORS[name],
                               label=f"{name} ({len(groups.get(name, ()))})")
                         for name in GROUPS],
                loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    summary = "   ".join([f"mAP {percent(means['mAP'])}"]
                         + [f"{name} {percent(means[f'mAP_{name}'])}" for name in GROUPS])
    axes.set_title(f"{title}   {summary}" if title else summary, fontsize=10)
    return figure


def save_per_class_ap_png(path, ap, class_names: Sequence[str],
                          groups: Mapping[str, Sequence[int]], class_counts=None,
                          title: str | None = None, dpi: int = 120) -> Path:
    """Write the per-class AP bar chart (``per_class_ap_figure``) as a PNG; returns the path."""
    figure = per_class_ap_figure(ap, class_names, groups, class_counts, title)
    with _missing_characters_said_once(class_names):
        return write_figure(path, figure, dpi=dpi)


def pr_curve_counts(targets, scores, max_points: int = MAX_PR_POINTS) -> dict[str, np.ndarray]:
    """Exact precision-recall operating points of one class, for ``add_pr_curve_raw``.

    Every distinct score is a threshold (predict positive when score >= threshold), as in
    scikit-learn's ``precision_recall_curve``; when there are more than ``max_points`` of
    them, ``max_points`` thresholds are kept, evenly spaced in rank, always including the
    lowest (recall 1) and the highest. Arrays are ordered by increasing threshold, the order
    TensorBoard expects. Works for any score scale (softmax, sigmoid or raw logits).
    """
    targets = _as_numpy(targets) > 0.5
    scores = _as_numpy(scores)
    descending = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_targets = scores[descending], targets[descending]
    # The last position of each run of equal scores: ties enter together.
    last_of_tie = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    true_pos = np.cumsum(sorted_targets)[last_of_tie]
    false_pos = (last_of_tie + 1) - true_pos
    if len(last_of_tie) > max_points:
        keep = np.unique(np.linspace(0, len(last_of_tie) - 1, max_points).round().astype(int))
        true_pos, false_pos = true_pos[keep], false_pos[keep]
    true_pos, false_pos = true_pos[::-1].astype(np.float64), false_pos[::-1].astype(np.float64)
    positives, negatives = targets.sum(), (~targets).sum()
    return {
        "true_positive_counts": true_pos,
        "false_positive_counts": false_pos,
        "true_negative_counts": negatives - false_pos,
        "false_negative_counts": positives - true_pos,
        "precision": true_pos / (true_pos + false_pos),
        "recall": true_pos / positives if positives else np.zeros_like(true_pos),
    }


def log_hparams(writer, hparams_dict: Mapping, metrics_dict: Mapping[str, float],
                step: int | None = None) -> None:
    """Write hyper-parameters and final metrics to the HParams tab of ``writer``'s run.

    Values the plugin cannot hold (lists, tuples, dicts, None, ...) are written as their
    ``str``; int, float, bool and str are kept. The metrics are also written as scalars with
    their own tags (choose tags not used elsewhere, e.g. "hparam/mAP"), which the plugin
    reads; a metric whose value is None (never measured) is left out. Unlike
    ``SummaryWriter.add_hparams`` this writes into the run's own event file instead of a new
    timestamped sub-run.
    """
    clean = {key: value if isinstance(value, (bool, int, float, str)) else str(value)
             for key, value in hparams_dict.items()}
    metrics = {key: float(value) for key, value in metrics_dict.items() if value is not None}
    # TensorBoard is imported with the writer; a test report, which draws charts only, needs none.
    from torch.utils.tensorboard.summary import hparams as hparams_summaries

    file_writer = writer._get_file_writer()  # add_hparams' own route, minus its sub-run
    for summary in hparams_summaries(clean, metrics):
        file_writer.add_summary(summary, step)
    for key, value in metrics.items():
        writer.add_scalar(key, value, step)


def log_evaluation_figures(writer, step: int, scores, targets, ap,
                           class_names: Sequence[str], groups: Mapping[str, Sequence[int]],
                           hparams: Mapping | None = None,
                           final_metrics: Mapping[str, float] | None = None,
                           class_counts=None, prefix: str = "val") -> None:
    """Log the pictures of one evaluation to a TensorBoard ``SummaryWriter``.

    scores, targets: [N, C] evaluation scores and binary targets; ap: per-class AP [C].
    Writes the per-class AP bar chart as image "<prefix>/per_class_ap", one PR curve per
    tail class with at least one positive as "pr_tail/<class name>" (exact counts through
    ``add_pr_curve_raw``: ``add_pr_curve`` would bucket scores into 127 bins of [0, 1],
    which breaks raw logits and flattens softmax scores), and, when both ``hparams`` and
    ``final_metrics`` are given, the HParams entry (``log_hparams``).
    """
    with _missing_characters_said_once(class_names):
        writer.add_figure(f"{prefix}/per_class_ap",
                          per_class_ap_figure(ap, class_names, groups, class_counts), step)
    scores, targets = _as_numpy(scores), _as_numpy(targets)
    for c in groups.get("tail", ()):
        if targets[:, c].sum() == 0:
            continue  # recall is undefined without positives
        curve = pr_curve_counts(targets[:, c], scores[:, c])
        writer.add_pr_curve_raw(f"pr_tail/{class_names[c]}", global_step=step,
                                num_thresholds=len(curve["precision"]), **curve)
    if hparams is not None and final_metrics is not None:
        log_hparams(writer, hparams, final_metrics, step)
