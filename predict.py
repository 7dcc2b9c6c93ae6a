"""Predict the classes of new images with a trained TailCLIP checkpoint.

    python predict.py --checkpoint=runs/demo/best_valid_mAP.pt photos/ extra.jpg \\
        [--top-k 5] [--threshold 0.3] [--thresholds FILE] [--output results.csv|results.json]

Folders are searched recursively for image files (.jpg, .jpeg, .png, .bmp, .gif, .webp,
.tif, .tiff, ... in any case). The checkpoint alone is enough: no training data or config
file is needed. Prints the top-k classes with their scores (the config's `score` kind) for
each image, and with --threshold every class whose probability, the sigmoid of its class
logit, is at or above it (whatever the score kind: softmax scores share one unit, so a
threshold on them could select only a few classes). --threshold is refused for a model whose
loss terms do not train that sigmoid as a probability (TailCLIP's clip + bal; asl, bce,
focal and dbfocal do). --thresholds FILE (written by test.py --calibrate) lists the classes
whose decision score (the probability, or for the others the cosine of image and class
prompt) reaches that class's threshold. Files that cannot be read
(not an image, corrupt or truncated) are reported and skipped, and listed at the end.
Exit codes: 0 when at least one image was read, 1 when none could be or the checkpoint or
the device cannot be used, 2 for bad arguments.
"""
import argparse
import os
import sys

from tailclip.arguments import ArgumentParser


def device_name(text: str) -> str:
    """``--device``, checked as the config option ``device`` is."""
    from tailclip.config import option_problem

    problem = option_problem("device", text)
    if problem:
        raise argparse.ArgumentTypeError(problem)
    return text


def parse_args(argv=None) -> argparse.Namespace:
    summary, details = __doc__.split("\n\n", 1)
    parser = ArgumentParser(description=summary, epilog=details,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a checkpoint written by train.py")
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER")
    parser.add_argument("--top-k", type=int, default=5,
                        help="classes printed per image (default 5)")
    parser.add_argument("--threshold", type=float,
                        help="also list every class whose probability (the sigmoid of its class "
                             "logit, whatever the ranking score) is >= this value, in [0, 1]; only for a "
                             "model trained with asl, bce, focal or dbfocal")
    parser.add_argument("--thresholds", metavar="FILE",
                        help="per-class thresholds from test.py --calibrate: also list the classes "
                             "that reach theirs")
    parser.add_argument("--output", help="write the predictions to this .csv or .json file")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="images scored at a time (default 32; lower it if memory runs short)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="image-decoding processes (0: decode in this process)")
    parser.add_argument("--device", default="auto", type=device_name,
                        help="auto (CUDA when available), cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    for name in ("top_k", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers < 0:
        parser.error("--workers must be at least 0")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        parser.error("--threshold must be in [0, 1] (a probability)")
    if args.output:
        from tailclip.errors import USER_ERRORS  # once the arguments are parsed: imports torch
        from tailclip.tools.predict import check_output_path

        try:
            check_output_path(args.output)
        except USER_ERRORS as error:
            parser.error(str(error))
    return args


def describe(path: str, top: list, above: list, threshold, selected: list | None = None) -> str:
    """One output line: the image and its best classes with scores, and those selected by
    the per-class thresholds when given."""
    line = f"{path}: " + ", ".join(f"{name} {score:.4f}" for name, score in top)
    if threshold is not None:
        line += f"  [sigmoid >= {threshold:g}: {', '.join(name for name, _ in above) or 'none'}]"
    if selected is not None:
        line += f"  [per-class thresholds: {', '.join(name for name, _ in selected) or 'none'}]"
    return line


def main(argv=None) -> int:
    args = parse_args(argv)
    from tailclip.engine.boundary import run_command  # once the arguments are parsed: imports torch

    return run_command(lambda: _predict(args), error_prefix="predict.py: error")


def _predict(args: argparse.Namespace) -> int:
    # Imported once the arguments are parsed, so that --help and a usage error answer at once.
    from tailclip.thresholds import read_thresholds, selected_classes
    from tailclip.tools.predict import find_images, load_predictor, predict_files, ranked_classes, write_results
    from tailclip.wording import count

    predictor = load_predictor(args.checkpoint, args.device)
    if args.threshold is not None:
        predictor.check_fixed_threshold()
    class_thresholds = (read_thresholds(args.thresholds, predictor.class_names, predictor.decision_score)
                        if args.thresholds else None)
    images, not_read = find_images(args.inputs)
    results = []
    for result in predict_files(predictor, images, args.batch_size, args.workers):
        results.append(result)
        if result.scores is None:
            print(f"warning: skipped {result.path}: {result.error}", file=sys.stderr)
            continue
        top, above = ranked_classes(result, predictor.class_names, args.top_k, args.threshold)
        selected = (selected_classes(result.decision_values, predictor.class_names, class_thresholds)
                    if class_thresholds is not None else None)
        print(describe(result.path, top, above, args.threshold, selected), flush=True)

    unreadable = not_read + [result for result in results if result.scores is None]
    read = sum(result.scores is not None for result in results)
    if args.output:
        metadata = {**predictor.metadata, **({"thresholds_file": args.thresholds} if args.thresholds else {})}
        path = write_results(args.output, results + not_read, predictor.class_names, args.top_k,
                             args.threshold, metadata, class_thresholds, predictor.decision_score)
        print(f"wrote {count(read, 'prediction')} to {path}", file=sys.stderr)
    if unreadable:
        print(f"{len(unreadable)} file(s) could not be read:", file=sys.stderr)
        for result in unreadable:
            print(f"  {result.path}: {result.error}", file=sys.stderr)
    if read == 0:
        print(f"predict.py: error: no image {'could be read' if images else 'found'}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
