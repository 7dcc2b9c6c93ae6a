"""Compare runs with the paper's authors' own runs: ``python compare.py RUN_DIR [RUN_DIR ...] [--tensorboard]``.

Each RUN_DIR is a run folder (``runs/<run name>/``), finished or still training. Its
effective config (``config.json``) is matched against the authors' logged runs
(``datasets/authors_runs/``): the runs that trained with the same settings, or, when there is
none, the nearest ones with each differing setting named. Prints the best-epoch and
last-epoch test mAP (all, head, medium, tail; percent) beside the authors' value or range
with a verdict per figure, and writes ``comparison.md`` (with the per-epoch table),
``comparison.json`` (mAP as fractions) and ``comparison.png`` into the run folder.
``--tensorboard`` also writes each matching authors' run to ``RUN_DIR/authors/<run>/``, so
that ``tensorboard --logdir RUN_DIR`` draws theirs beside ours. Exit codes: 0 done, 1 a
folder that is not a run folder or a run the record cannot speak to (another dataset),
2 bad arguments.
"""
import argparse
import sys

from tailclip.arguments import ArgumentParser


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="a run folder, runs/<run name>")
    parser.add_argument("--tensorboard", action="store_true",
                        help="also write the matching authors' runs as TensorBoard runs in RUN_DIR/authors/")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tailclip.engine.boundary import run_command  # once the arguments are parsed: imports torch

    return run_command(lambda: _compare(args))


def _compare(args: argparse.Namespace) -> int:
    # Imported once the arguments are parsed, so that --help and a usage error answer at once.
    from tailclip.errors import USER_ERRORS
    from tailclip.tools.authors_record import load_record
    from tailclip.tools.comparison import summary_text, write_comparison

    failed = False
    runs = load_record()
    for run_dir in args.run_dirs:
        try:
            result, paths = write_comparison(run_dir, runs, tensorboard=args.tensorboard)
        except USER_ERRORS as error:  # the user's to fix; a bug keeps its traceback
            print(f"error: {error}", file=sys.stderr)
            failed = True
            continue
        print(summary_text(result))
        for path in paths:
            print(f"wrote {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
