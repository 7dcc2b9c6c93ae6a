"""Evaluate a trained TailCLIP checkpoint, or zero-shot CLIP, on the test split.

    python test.py --config=configs/voc_mlt_vitb16.py [--checkpoint=best_valid_mAP.pt]
    python test.py --config=configs/voc_mlt_vitb16.py --zeroshot

``--checkpoint`` is a file name inside ``<run_dir>/<run name>/`` (``best_valid_mAP.pt``,
``best_valid_mAP_tail.pt``, ``newest_train_checkpoint.pt``) or a path. ``--zeroshot`` (or
``--zeroshot=True``) scores the CLIP weights the config names (OpenAI's, or random ones from
``seed`` with ``pretrained = False``, which the report warns about) with the class prompts,
without any training. A checkpoint is evaluated with its own config: the config file gives
only where the data is and how to run (device, precision, batch size, workers, ...); where it
differs in what was learnt, one line names the options. Prints mAP (total / head / medium /
tail), AUROC, the multi-label and single-label subsets and the PD/ND ratios in percent, and
writes them as fractions beside the checkpoint (``<run>`` for zero-shot), to
``test_<checkpoint stem or "zeroshot">.json`` (strict JSON: an undefined value, such as the AP
of a class without test images, is null) with the per-class AP chart
``per_class_ap_<checkpoint stem or "zeroshot">.png``. Under ``torchrun`` the processes share
the test images and rank 0 prints and writes. It also prints CP, CR, CF1, OP, OR and OF1 (and
CF1 per group) as ML-GCN computes them, at top-3 and, for a model whose loss terms train
sigmoid(logit) as a probability (asl, bce, focal, dbfocal), at the threshold 0.5, with the
per-class precision, recall and F1 in the JSON file.

``--calibrate SPLIT`` chooses a threshold per class on SPLIT (a list file in the split format,
or ``train``; never the test split; on training images only, a warning says the thresholds
are optimistic): the
one that maximises F1, or with ``--target-precision P`` the lowest that reaches precision P.
The thresholds apply to the probability, or for the other models to the cosine of image and
class prompt. It writes them beside the checkpoint, to ``thresholds_<checkpoint stem>.json``
(for ``predict.py --thresholds``), and prints the test metrics with them.
Exit codes: 0 done, 1 error (a bad config, checkpoint or input), 2 bad arguments.
"""
import argparse
import sys

from tailclip.arguments import ArgumentParser


def _flag(text: str) -> bool:
    from tailclip.config import ConfigError, parse_bool  # when a flag is read: --help imports nothing

    try:
        return parse_bool(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the config the model was trained with")
    parser.add_argument("--checkpoint", help="file name in the run folder or a path "
                                             "(default: best_valid_mAP.pt)")
    parser.add_argument("--zeroshot", type=_flag, nargs="?", const=True, default=False, metavar="BOOL",
                        help="evaluate CLIP's own weights, untrained (alone, or =True/False)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config option (repeatable)")
    parser.add_argument("--run-name", help="name of the run folder (default: the config's stem; for a run's "
                                           "config.json, its run folder's name)")
    parser.add_argument("--calibrate", metavar="SPLIT",
                        help="choose per-class thresholds on this split file (or 'train')")
    parser.add_argument("--target-precision", type=float, metavar="P",
                        help="with --calibrate: the lowest threshold reaching precision P per class "
                             "(default: the threshold with the best F1)")
    args = parser.parse_args(argv)
    if args.zeroshot and args.checkpoint:
        parser.error("give either --checkpoint or --zeroshot, not both")
    if args.target_precision is not None:
        if args.calibrate is None:
            parser.error("--target-precision needs --calibrate SPLIT")
        if not 0 < args.target_precision <= 1:
            parser.error("--target-precision must be in (0, 1]")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from tailclip.engine.boundary import run_command  # once the arguments are parsed: imports torch

    return run_command(lambda: _test(args))


def _test(args: argparse.Namespace) -> int:
    # Imported once the arguments are parsed, so that --help and a usage error answer at once.
    from tailclip.config import default_run_name, load_config, resolve_path
    from tailclip.engine.boundary import check_writable
    from tailclip.engine.distributed import cleanup, is_main_process
    from tailclip.engine.run_folder import BEST_MAP_CHECKPOINT
    from tailclip.tools.report import (
        ZEROSHOT,
        evaluate_checkpoint,
        format_report,
        report_folder,
        resolve_checkpoint,
        write_report,
    )

    try:
        cfg = load_config(args.config, args.overrides)
        run_dir = resolve_path(cfg.run_dir) / (args.run_name or default_run_name(args.config))
        source = ZEROSHOT if args.zeroshot else resolve_checkpoint(args.checkpoint or BEST_MAP_CHECKPOINT, run_dir)
        check_writable(report_folder({"checkpoint": str(source)}, run_dir), "report folder",
                       "--set run_dir=PATH, --run-name NAME")  # before any work
        report = evaluate_checkpoint(cfg, run_dir, args.checkpoint, args.zeroshot, args.calibrate,
                                     args.target_precision)
        writes = is_main_process()  # under torchrun only rank 0 prints and writes
    finally:
        cleanup()
    if writes:
        print(format_report(report))
        *files, last = write_report(report, run_dir)
        print(f"wrote {', '.join(map(str, files))} and {last}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
