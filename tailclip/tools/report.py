"""The test report of ``test.py``: a checkpoint (or zero-shot CLIP) scored on the test split.

mAP, AUROC, AP and the decision metrics (``tailclip.thresholds``) are stored as fractions in
[0, 1] (``"mAP_unit": "fraction"`` says so in the JSON file) and printed in percent, as the
training logs do. A checkpoint is evaluated with its own config, the config file supplying
only where the data is and how to run (`RUN_OPTIONS`), and its report lies beside it.
"""
import dataclasses
import math
import warnings
from pathlib import Path

from tailclip.config import CUSTOM_DATASET_FILES, RUNNING, Config, options_with_role
from tailclip.data.balance import GROUPS
from tailclip.engine.batches import build_split_batches
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.distributed import init_distributed
from tailclip.engine.evaluation import evaluate_model
from tailclip.engine.files import write_json
from tailclip.engine.logger import MAP_UNIT, json_safe
from tailclip.engine.run_folder import BEST_MAP_CHECKPOINT
from tailclip.engine.setup import build_run_parts
from tailclip.errors import MissingFileError
from tailclip.metrics import EMPTY_AS_ZERO, pd_nd_ratio, subset_metrics
from tailclip.thresholds import (
    DECISION_SCORES,
    DEFAULT_THRESHOLD,
    DEFINITIONS,
    PRETRAINING_TERMS,
    SUMMARY_NAMES,
    TOP_K,
    decision_score,
    no_threshold_reason,
    per_class,
    scalar_metrics,
    split_top_k,
    thresholds_document,
)
from tailclip.tools.calibration import calibrated_report, calibration_entries
from tailclip.wording import count, percent

ZEROSHOT = "zeroshot"  # the report's name for CLIP's own weights
# What the config file gives the evaluation of a checkpoint: where the data is and how to run
# (the options whose role is how a run runs). Every other option is what the checkpoint
# learnt with, and its own config's value counts.
DATA_OPTIONS = ("dataset", "data_root", *CUSTOM_DATASET_FILES, "skip_unreadable_images")
RUN_OPTIONS = frozenset(DATA_OPTIONS) | frozenset(options_with_role(RUNNING))


def resolve_checkpoint(name: str, run_dir: Path) -> Path:
    """``name`` as a path if that file exists, else the file of that name in ``run_dir``."""
    if Path(name).is_file():
        return Path(name)
    if (run_dir / name).is_file():
        return run_dir / name
    present = sorted(p.name for p in run_dir.glob("*.pt")) if run_dir.is_dir() else []
    raise MissingFileError(f"checkpoint {name!r} is neither a file nor in {run_dir}/ "
                           f"(checkpoints there: {', '.join(present) or 'none'})")


def _without_ap(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "AP"}


def _without_positives(metrics: dict, class_names) -> list[str]:
    """The classes that ``evaluate`` found no positive image of (their AP is undefined)."""
    return [name for name, ap in zip(class_names, metrics["AP"]) if math.isnan(ap)]


def zeroshot_warning(cfg) -> str | None:
    """Why a zero-shot score means nothing, when it does not: the weights are random."""
    if cfg.pretrained:
        return None
    return (f"pretrained = False: the zero-shot model is {cfg.model_name} with random weights "
            f"(seed {cfg.seed}), not a trained CLIP; its scores are those of chance")


def checkpoint_config(checkpoint: dict, cfg: Config, path) -> tuple[Config, dict]:
    """The config a checkpoint is evaluated with: its own, with ``cfg``'s `RUN_OPTIONS`; and
    ``{option: (the checkpoint's value, cfg's)}`` where ``cfg`` differs in what was learnt."""
    own = Config.from_dict(checkpoint["config"], source=str(path))
    evaluated = dataclasses.replace(own, **{key: getattr(cfg, key) for key in RUN_OPTIONS})
    differences = {key: (value, getattr(cfg, key)) for key, value in own.to_dict().items()
                   if key not in RUN_OPTIONS and value != getattr(cfg, key)}
    return evaluated, differences


def _decisions(evaluation, class_names, trained_with) -> dict:
    """The report's decision block: at the threshold 0.5 only for a model trained to output
    probabilities (`tailclip.thresholds.decision_score`), and at top-3."""
    at_threshold, top = split_top_k(evaluation.decisions)
    score = evaluation.decision_score
    block = {"score": score.name, "score_meaning": score.meaning, "definitions": DEFINITIONS}
    if at_threshold:
        block.update({"threshold": DEFAULT_THRESHOLD, "at_threshold": scalar_metrics(at_threshold),
                      "per_class": per_class(at_threshold, class_names)})
    else:
        block["no_threshold"] = no_threshold_reason(trained_with)
    return {**block, f"top{TOP_K}": scalar_metrics(top), f"per_class_top{TOP_K}": per_class(top, class_names)}


def evaluate_checkpoint(cfg, run_dir: Path, checkpoint_name: str | None, zeroshot: bool,
                        calibrate_on: str | None = None, target_precision: float | None = None) -> dict:
    """Evaluate on the test split and return the report that ``test.py`` prints and writes;
    with ``calibrate_on`` (a split file or "train", `tailclip.tools.calibration`), also per-class
    thresholds chosen on that split (to the F1 maximum, or to ``target_precision``) and the
    test metrics with them."""
    device = init_distributed(cfg.device).device  # under torchrun, each process scores a shard
    differences = {}
    if zeroshot:
        checkpoint, path, source, epoch = None, None, ZEROSHOT, 0
    else:
        path = resolve_checkpoint(checkpoint_name or BEST_MAP_CHECKPOINT, run_dir)
        checkpoint = load_checkpoint(path)
        cfg, differences = checkpoint_config(checkpoint, cfg, path)
        source, epoch = str(path), checkpoint["state"]["epoch"]
    parts = build_run_parts(cfg, device, checkpoint, path, train_images=False)  # evaluation reads the test images
    data, model, objective, precision = parts.data, parts.model, parts.objective, parts.precision
    calibration = calibration_entries(calibrate_on, data) if calibrate_on is not None else None
    trained_with = PRETRAINING_TERMS if zeroshot else cfg.loss_function
    batches = build_split_batches(cfg, data, train=False, device=device)
    with warnings.catch_warnings():  # a class without a positive image: the report's notes say it
        warnings.filterwarnings("ignore", message="classes .* have no positive image")
        result = evaluate_model(model, objective, batches.batches(device), data.test.caption_tokens, device,
                                precision, data.groups, keep_embeddings=True, score=decision_score(trained_with))
        subsets = subset_metrics(result.scores, result.targets, data.groups)
        calibrated = ({"calibrated": calibrated_report(cfg, data, model, objective, calibration, calibrate_on,
                                                       source, result, device, precision, target_precision)}
                      if calibration is not None else {})
    labels_per_image = result.targets.sum(1)
    warning = zeroshot_warning(cfg) if zeroshot else None
    without_positives = {name: _without_positives(metrics, data.class_names) for name, metrics in
                         (("all", result.metrics), ("multi_label", subsets["multi_label"]),
                          ("single_label", subsets["single_label"]))}
    return {
        "checkpoint": source,
        "epoch": epoch,
        **({"warning": warning} if warning else {}),
        **({"config_differences": {key: {"checkpoint": own, "config_file": given}
                                   for key, (own, given) in differences.items()}} if differences else {}),
        "dataset": cfg.dataset,
        "model_name": cfg.model_name,
        "num_images": len(result.targets),
        "mAP_unit": MAP_UNIT,
        "loss": result.loss,
        "metrics": _without_ap(result.metrics),
        **({"without_positives": without_positives} if any(without_positives.values()) else {}),
        "per_class_AP": dict(zip(data.class_names, result.metrics["AP"])),
        "subsets": {
            "multi_label": {"num_images": int((labels_per_image >= 2).sum()),
                            **_without_ap(subsets["multi_label"])},
            "single_label": {"num_images": int((labels_per_image == 1).sum()),
                             **_without_ap(subsets["single_label"])},
        },
        "pd_nd": pd_nd_ratio(result.image_emb, result.targets, data.groups),
        "decisions": _decisions(result, data.class_names, trained_with),
        **calibrated,
        "groups": data.groups,
        "class_counts": data.train_targets.sum(0).tolist(),
    }


def _cell(value, as_percent: bool = True, width: int = 8) -> str:
    if as_percent or value is None or not math.isfinite(value):
        return f"{percent(value):>{width}}"
    return f"{value:{width}.3f}"


def _decision_lines(report: dict) -> list[str]:
    """CP ... OF1 and the groups' CF1 at the threshold 0.5 (a model with probabilities), at
    top-3 and, when calibrated, at the per-class thresholds."""
    decisions = report["decisions"]
    if "at_threshold" in decisions:
        rows = [(f"threshold {decisions['threshold']:g}", decisions["at_threshold"]),
                (f"top-{TOP_K}, p >= {decisions['threshold']:g}", decisions[f"top{TOP_K}"])]
    else:
        rows = [(f"top-{TOP_K}", decisions[f"top{TOP_K}"])]
    calibrated = report.get("calibrated")
    if calibrated:
        rows.append((f"per-class ({Path(calibrated['split']).name})", calibrated["metrics"]))
    lines = [f"{'(percent)':24}" + "".join(f"{name:>8}" for name in SUMMARY_NAMES)
             + "".join(f"{'CF1 ' + g:>11}" for g in GROUPS)]
    lines += [f"{label:24}" + "".join(_cell(metrics.get(name)) for name in SUMMARY_NAMES)
              + "".join(_cell(metrics.get(f"CF1_{g}"), width=11) for g in GROUPS) for label, metrics in rows]
    lines += [f"note: {decisions['no_threshold']}"] if "no_threshold" in decisions else []
    if calibrated:
        lines += [f"warning: {calibrated['warning']}"] if "warning" in calibrated else []
        lines += [f"note: {name}: {note}" for name, note in calibrated["notes"].items()]
    return lines


def _empty_class_note(label: str, metrics: dict, empty: list[str]) -> list[str]:
    """Which mAP convention a row prints, where classes (``empty``) have no positive image."""
    if not empty:
        return []
    groups = ", ".join(f"{g} {_cell(metrics.get(f'mAP_{g}{EMPTY_AS_ZERO}'), width=0)}" for g in GROUPS)
    return [f"note: {label}: mAP leaves out {count(len(empty), 'class', 'classes')} without a positive image "
            f"({', '.join(empty[:5])}{', ...' if len(empty) > 5 else ''}); counting them as AP 0, as "
            f"scikit-learn and the authors' code do: mAP {_cell(metrics[f'mAP{EMPTY_AS_ZERO}'], width=0)} "
            f"({groups}), in the JSON as mAP{EMPTY_AS_ZERO}"]


def format_report(report: dict) -> str:
    """The report as a text table (mAP and AUROC in percent), after its warning if any."""
    lines = [f"warning: {report['warning']}"] if "warning" in report else []
    differences = report.get("config_differences", {})
    lines += ["note: evaluated with the checkpoint's own config, which differs from the config file in what "
              "was learnt: " + ", ".join(f"{key} = {value['checkpoint']!r} (the file: {value['config_file']!r})"
                                          for key, value in differences.items())] if differences else []
    lines += [f"{report['checkpoint']} (epoch {report['epoch']}): {report['model_name']} on the "
              f"{report['dataset']} test split, {report['num_images']} images, loss {report['loss']:.4f}",
              f"{'(percent)':24}{'mAP':>8}" + "".join(f"{g:>8}" for g in GROUPS) + f"{'AUROC':>8}"]

    def row(label: str, metrics: dict) -> str:
        return (f"{label:24}{_cell(metrics.get('mAP'))}"
                + "".join(_cell(metrics.get(f"mAP_{g}")) for g in GROUPS) + _cell(metrics.get("AUROC")))

    rows = [("all images", report["metrics"])] + [
        (f"{name.replace('_', '-')} ({report['subsets'][name]['num_images']})", report["subsets"][name])
        for name in ("multi_label", "single_label")]
    lines += [row(label, metrics) for label, metrics in rows]
    pd_nd = report["pd_nd"]
    lines.append(f"{'PD/ND (lower is better)':24}{_cell(pd_nd['PD_ND'], False)}"
                 + "".join(_cell(pd_nd.get(f"PD_ND_{g}"), False) for g in GROUPS))
    split_names = {"all": "the test split", "multi_label": "its multi-label images",
                   "single_label": "its single-label images"}
    empty = report.get("without_positives", {})
    lines += [note for (key, name), (_, metrics) in zip(split_names.items(), rows)
              for note in _empty_class_note(name, metrics, empty.get(key, []))]
    return "\n".join(lines + _decision_lines(report))


def report_name(report: dict) -> str:
    """What the report's files are named after: the checkpoint's stem, or "zeroshot"."""
    return Path(report["checkpoint"]).stem


def report_folder(report: dict, run_dir: Path) -> Path:
    """Where the report's files go: beside the checkpoint evaluated (whichever run folder
    the config names), or ``run_dir`` for zero-shot CLIP."""
    return run_dir if report["checkpoint"] == ZEROSHOT else Path(report["checkpoint"]).parent


def write_report(report: dict, run_dir: Path) -> list[Path]:
    """``test_<name>.json`` (strict JSON: an undefined value is null) and the per-class AP
    chart ``per_class_ap_<name>.png`` in the `report_folder`, one pair per checkpoint, and
    with a calibration its ``thresholds_<name>.json``."""
    name = report_name(report)
    folder = report_folder(report, run_dir)
    output = write_json(folder / f"test_{name}.json", json_safe(report), allow_nan=False)
    from tailclip.engine import visualize  # matplotlib: imported once the report is computed

    per_class = report["per_class_AP"]
    chart = visualize.save_per_class_ap_png(folder / f"per_class_ap_{name}.png", list(per_class.values()),
                                            list(per_class), report["groups"], report["class_counts"],
                                            title=name)
    calibrated = report.get("calibrated")
    if not calibrated:
        return [output, chart]
    thresholds = write_json(folder / calibrated["thresholds_file"], thresholds_document(
        calibrated["thresholds"], DECISION_SCORES[calibrated["score"]], calibrated["split"], report["checkpoint"],
        calibrated["target_precision"], calibrated["notes"]))
    return [output, chart, thresholds]
