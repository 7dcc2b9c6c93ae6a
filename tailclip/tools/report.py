"""The test report of ``test.py``: a checkpoint (or zero-shot CLIP) scored on the test split.

mAP, AUROC, AP and the decision metrics (``tailclip.thresholds``) are stored as fractions in
[0, 1] (``"mAP_unit": "fraction"`` says so in the JSON file) and printed in percent, as the
training logs do.
"""
import json
import math
from pathlib import Path

from tailclip.engine import visualize
from tailclip.engine.batches import build_split_batches
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.distributed import init_distributed
from tailclip.engine.evaluation import evaluate_model
from tailclip.engine.logger import MAP_UNIT, json_safe
from tailclip.engine.run_folder import BEST_MAP_CHECKPOINT
from tailclip.engine.setup import build_run_parts
from tailclip.errors import MissingFileError
from tailclip.metrics import pd_nd_ratio, subset_metrics
from tailclip.thresholds import (
    DEFAULT_THRESHOLD,
    DEFINITIONS,
    PROBABILITY,
    SUMMARY_NAMES,
    TOP_K,
    per_class,
    scalar_metrics,
    split_top_k,
    write_thresholds,
)
from tailclip.tools.calibration import calibrated_report, calibration_entries

GROUPS = ("head", "medium", "tail")
ZEROSHOT = "zeroshot"  # the report's name for CLIP's own weights


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


def zeroshot_warning(cfg) -> str | None:
    """Why a zero-shot score means nothing, when it does not: the weights are random."""
    if cfg.pretrained:
        return None
    return (f"pretrained = False: the zero-shot model is {cfg.model_name} with random weights "
            f"(seed {cfg.seed}), not a trained CLIP; its scores are those of chance")


def _decisions(evaluation, class_names) -> dict:
    at_threshold, top = split_top_k(evaluation.decisions)
    return {"probability": PROBABILITY, "definitions": DEFINITIONS, "threshold": DEFAULT_THRESHOLD,
            "at_threshold": scalar_metrics(at_threshold), f"top{TOP_K}": scalar_metrics(top),
            "per_class": per_class(at_threshold, class_names),
            f"per_class_top{TOP_K}": per_class(top, class_names)}


def evaluate_checkpoint(cfg, run_dir: Path, checkpoint_name: str | None, zeroshot: bool,
                        calibrate_on: str | None = None, target_precision: float | None = None) -> dict:
    """Evaluate on the test split and return the report that ``test.py`` prints and writes;
    with ``calibrate_on`` (a split file or "train", `tailclip.tools.calibration`), also per-class
    thresholds chosen on that split (to the F1 maximum, or to ``target_precision``) and the
    test metrics with them."""
    device = init_distributed(cfg.device).device  # under torchrun, each process scores a shard
    if zeroshot:
        checkpoint, path, source, epoch = None, None, ZEROSHOT, 0
    else:
        path = resolve_checkpoint(checkpoint_name or BEST_MAP_CHECKPOINT, run_dir)
        checkpoint = load_checkpoint(path)
        source, epoch = str(path), checkpoint["state"]["epoch"]
    parts = build_run_parts(cfg, device, checkpoint, path, train_images=False)  # evaluation reads the test images
    data, model, objective, precision = parts.data, parts.model, parts.objective, parts.precision
    calibration = calibration_entries(calibrate_on, data) if calibrate_on is not None else None
    batches = build_split_batches(cfg, data, train=False, device=device)
    result = evaluate_model(model, objective, batches.batches(device), data.test.caption_tokens, device,
                            precision, data.groups, keep_embeddings=True)
    labels_per_image = result.targets.sum(1)
    subsets = subset_metrics(result.scores, result.targets, data.groups)
    warning = zeroshot_warning(cfg) if zeroshot else None
    calibrated = ({"calibrated": calibrated_report(cfg, data, model, objective, calibration, calibrate_on, source,
                                                   result, device, precision, target_precision)}
                  if calibration is not None else {})
    return {
        "checkpoint": source,
        "epoch": epoch,
        **({"warning": warning} if warning else {}),
        "dataset": cfg.dataset,
        "model_name": cfg.model_name,
        "num_images": len(result.targets),
        "mAP_unit": MAP_UNIT,
        "loss": result.loss,
        "metrics": _without_ap(result.metrics),
        "per_class_AP": dict(zip(data.class_names, result.metrics["AP"])),
        "subsets": {
            "multi_label": {"num_images": int((labels_per_image >= 2).sum()),
                            **_without_ap(subsets["multi_label"])},
            "single_label": {"num_images": int((labels_per_image == 1).sum()),
                             **_without_ap(subsets["single_label"])},
        },
        "pd_nd": pd_nd_ratio(result.image_emb, result.targets, data.groups),
        "decisions": _decisions(result, data.class_names),
        **calibrated,
        "groups": data.groups,
        "class_counts": data.train_targets.sum(0).tolist(),
    }


def _cell(value, percent: bool = True, width: int = 8) -> str:
    if value is None or not math.isfinite(value):
        return f"{'n/a':>{width}}"
    return f"{100 * value:{width}.1f}" if percent else f"{value:{width}.3f}"


def _decision_lines(report: dict) -> list[str]:
    """CP ... OF1 and the groups' CF1 at the global threshold, at top-3 and, when calibrated,
    at the per-class thresholds."""
    decisions = report["decisions"]
    rows = [(f"threshold {decisions['threshold']:g}", decisions["at_threshold"]),
            (f"top-{TOP_K}", decisions[f"top{TOP_K}"])]
    calibrated = report.get("calibrated")
    if calibrated:
        rows.append((f"per-class ({Path(calibrated['split']).name})", calibrated["metrics"]))
    lines = [f"{'(percent)':24}" + "".join(f"{name:>8}" for name in SUMMARY_NAMES)
             + "".join(f"{'CF1 ' + g:>11}" for g in GROUPS)]
    lines += [f"{label:24}" + "".join(_cell(metrics.get(name)) for name in SUMMARY_NAMES)
              + "".join(_cell(metrics.get(f"CF1_{g}"), width=11) for g in GROUPS) for label, metrics in rows]
    if calibrated:
        lines += [f"warning: {calibrated['warning']}"] if "warning" in calibrated else []
        lines += [f"note: {name}: {note}" for name, note in calibrated["notes"].items()]
    return lines


def format_report(report: dict) -> str:
    """The report as a text table (mAP and AUROC in percent), after its warning if any."""
    lines = [f"warning: {report['warning']}"] if "warning" in report else []
    lines += [f"{report['checkpoint']} (epoch {report['epoch']}): {report['model_name']} on the "
              f"{report['dataset']} test split, {report['num_images']} images, loss {report['loss']:.4f}",
              f"{'(percent)':24}{'mAP':>8}" + "".join(f"{g:>8}" for g in GROUPS) + f"{'AUROC':>8}"]

    def row(label: str, metrics: dict) -> str:
        return (f"{label:24}{_cell(metrics.get('mAP'))}"
                + "".join(_cell(metrics.get(f"mAP_{g}")) for g in GROUPS) + _cell(metrics.get("AUROC")))

    lines.append(row("all images", report["metrics"]))
    for name in ("multi_label", "single_label"):
        subset = report["subsets"][name]
        lines.append(row(f"{name.replace('_', '-')} ({subset['num_images']})", subset))
    pd_nd = report["pd_nd"]
    lines.append(f"{'PD/ND (lower is better)':24}{_cell(pd_nd['PD_ND'], False)}"
                 + "".join(_cell(pd_nd.get(f"PD_ND_{g}"), False) for g in GROUPS))
    return "\n".join(lines + _decision_lines(report))


def report_name(report: dict) -> str:
    """What the report's files are named after: the checkpoint's stem, or "zeroshot"."""
    return Path(report["checkpoint"]).stem


def write_report(report: dict, run_dir: Path) -> list[Path]:
    """``test_<name>.json`` (strict JSON: an undefined value is null) and the per-class AP
    chart ``per_class_ap_<name>.png`` in ``run_dir``, one pair per checkpoint, and with a
    calibration its ``thresholds_<name>.json``."""
    name = report_name(report)
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / f"test_{name}.json"
    output.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    per_class = report["per_class_AP"]
    chart = visualize.save_per_class_ap_png(run_dir / f"per_class_ap_{name}.png", list(per_class.values()),
                                            list(per_class), report["groups"], report["class_counts"],
                                            title=name)
    calibrated = report.get("calibrated")
    if not calibrated:
        return [output, chart]
    thresholds = write_thresholds(run_dir / calibrated["thresholds_file"], calibrated["thresholds"],
                                  calibrated["split"], report["checkpoint"], calibrated["target_precision"],
                                  calibrated["notes"])
    return [output, chart, thresholds]
