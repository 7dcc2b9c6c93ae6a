"""Evaluate a trained TailCLIP checkpoint, or zero-shot CLIP, on the test split.

    python test.py --config=configs/voc_mlt_vitb16.py [--checkpoint=best_valid_mAP.pt]
    python test.py --config=configs/voc_mlt_vitb16.py --zeroshot=True

``--checkpoint`` is a file name inside ``<run_dir>/<run name>/`` (``best_valid_mAP.pt``,
``best_valid_mAP_tail.pt``, ``newest_train_checkpoint.pt``) or a path. ``--zeroshot=True``
scores the CLIP weights the config names (OpenAI's, or random ones from ``seed`` with
``pretrained = False``) with the class prompts, without any training. Prints mAP (total /
head / medium / tail), AUROC, the multi-label and single-label subsets and the PD/ND
ratios, and writes them to ``<run>/test_<checkpoint stem or "zeroshot">.json`` (strict
JSON: an undefined value, such as the AP of a class without test images, is null) with the
per-class AP chart ``<run>/per_class_ap.png`` (``per_class_ap_zeroshot.png`` for
``--zeroshot``; the chart of the last checkpoint evaluated). Under ``torchrun`` the
processes share the test images and rank 0 prints and writes.
"""
import argparse
import json
import math
import sys
from pathlib import Path

from tailclip import visualize
from tailclip.batches import build_split_batches
from tailclip.checkpoint import CheckpointError, load_checkpoint
from tailclip.config import ConfigError, load_config, parse_bool
from tailclip.data import build_data
from tailclip.distributed import cleanup, init_distributed, is_main_process, main_process_first
from tailclip.evaluation import evaluate_model
from tailclip.factory import build_model, seed_everything, set_cpu_threads
from tailclip.run_folder import BEST_MAP_CHECKPOINT, check_checkpoint_matches, trained_model
from tailclip.logger import json_safe
from tailclip.metrics import pd_nd_ratio, subset_metrics
from tailclip.precision import resolve_precision, set_tf32

GROUPS = ("head", "medium", "tail")


def _flag(text: str) -> bool:
    try:
        return parse_bool(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the config the model was trained with")
    parser.add_argument("--checkpoint", help=f"file name in the run folder or a path "
                                             f"(default: {BEST_MAP_CHECKPOINT})")
    parser.add_argument("--zeroshot", type=_flag, default=False, metavar="BOOL",
                        help="evaluate CLIP's own weights, untrained (True/False)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config option (repeatable)")
    parser.add_argument("--run-name", help="name of the run folder (default: the config's stem)")
    args = parser.parse_args(argv)
    if args.zeroshot and args.checkpoint:
        parser.error("give either --checkpoint or --zeroshot=True, not both")
    return args


def resolve_checkpoint(name: str, run_dir: Path) -> Path:
    """``name`` as a path if that file exists, else the file of that name in ``run_dir``."""
    if Path(name).is_file():
        return Path(name)
    if (run_dir / name).is_file():
        return run_dir / name
    present = sorted(p.name for p in run_dir.glob("*.pt")) if run_dir.is_dir() else []
    raise FileNotFoundError(f"checkpoint {name!r} is neither a file nor in {run_dir}/ "
                            f"(checkpoints there: {', '.join(present) or 'none'})")


def _without_ap(metrics: dict) -> dict:
    return {key: value for key, value in metrics.items() if key != "AP"}


def run_test(cfg, run_dir: Path, checkpoint_name: str | None, zeroshot: bool) -> dict:
    """Evaluate and return the report that ``test.py`` prints and writes."""
    device = init_distributed(cfg.device).device  # under torchrun, each process scores a shard
    precision = resolve_precision(cfg.precision, device)
    set_tf32(cfg.tf32, device)
    set_cpu_threads(cfg.num_threads)
    seed_everything(cfg.seed)  # the random weights of a zero-shot run with pretrained = False
    with main_process_first():  # one process per node generates the data, downloads weights
        data = build_data(cfg)
        if zeroshot:
            model, source, epoch = build_model(cfg, data.label_prompts, data.class_weights), "zeroshot", 0
        else:
            path = resolve_checkpoint(checkpoint_name or BEST_MAP_CHECKPOINT, run_dir)
            checkpoint = load_checkpoint(path)
            check_checkpoint_matches(checkpoint, cfg, data.class_names, path)
            model = trained_model(checkpoint, cfg, data.label_prompts, path, data.class_weights)
            source, epoch = str(path), checkpoint["state"]["epoch"]
    model.to(device)
    batches = build_split_batches(cfg, data, train=False, device=device)
    result = evaluate_model(model, batches.batches(device), data.test.caption_tokens, device,
                            precision, data.groups, keep_embeddings=True)
    labels_per_image = result.targets.sum(1)
    subsets = subset_metrics(result.scores, result.targets, data.groups)
    return {
        "checkpoint": source,
        "epoch": epoch,
        "dataset": cfg.dataset,
        "model_name": cfg.model_name,
        "num_images": len(result.targets),
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
        "groups": data.groups,
        "class_counts": data.train_targets.sum(0).tolist(),
    }


def _cell(value, percent: bool = True) -> str:
    if value is None or not math.isfinite(value):
        return f"{'n/a':>8}"
    return f"{100 * value:8.1f}" if percent else f"{value:8.3f}"


def format_table(report: dict) -> str:
    """The report as a text table (mAP and AUROC in percent)."""
    lines = [f"{report['checkpoint']} (epoch {report['epoch']}): {report['model_name']} on the "
             f"{report['dataset']} test split, {report['num_images']} images, loss {report['loss']:.4f}",
             f"{'':24}{'mAP':>8}" + "".join(f"{g:>8}" for g in GROUPS) + f"{'AUROC':>8}"]

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
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = Path(cfg.run_dir) / (args.run_name or Path(args.config).stem)
        report = run_test(cfg, run_dir, args.checkpoint, args.zeroshot)
        writes = is_main_process()  # under torchrun only rank 0 prints and writes
    # Errors about the user's inputs, as train.py reports them (an unreadable image is an
    # OSError, as a missing file).
    except (ConfigError, CheckpointError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        cleanup()
    if not writes:
        return 0
    print(format_table(report))
    stem = "zeroshot" if args.zeroshot else Path(report["checkpoint"]).stem
    run_dir.mkdir(parents=True, exist_ok=True)
    output = run_dir / f"test_{stem}.json"
    output.write_text(json.dumps(json_safe(report), indent=2, allow_nan=False) + "\n")
    chart = visualize.save_per_class_ap_png(
        run_dir / ("per_class_ap_zeroshot.png" if args.zeroshot else "per_class_ap.png"), list(report["per_class_AP"].values()),
        list(report["per_class_AP"]), report["groups"], report["class_counts"], title=stem)
    print(f"wrote {output} and {chart}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
