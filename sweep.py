"""Sweeps, searches and their result tables.

  python sweep.py --config CONFIG --name NAME --grid KEY=V1,V2 [--grid ...] [--seeds 0,1,2]
  python sweep.py --config CONFIG --name NAME --variant NAME:KEY=V[,KEY=V...] [--variant ...]
  python sweep.py --config CONFIG --name NAME --search N --range KEY=LOW:HIGH[:log] [--grid ...]
  python sweep.py --report runs/NAME

Each run trains in ``<run_dir>/NAME/<setting>_seed<k>/``. Running the same command again
skips finished runs and resumes interrupted ones. At the end (and with ``--report``) the
sweep folder gets ``results.md``, ``results.csv`` and ``results.png``. With ``--search``,
``--grid`` values are categorical choices. Exit codes: 0 done, 1 an error or a failed run,
130 stopped by Ctrl-C (143 by SIGTERM, 129 by SIGHUP) after the running run saved its checkpoint.
"""
import argparse
import sys

from tailclip.arguments import ArgumentParser


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog=__doc__.split("\n", 2)[2].replace("``", ""))
    parser.add_argument("--config", help="the config file every run starts from")
    parser.add_argument("--name", help="the sweep's folder name under the config's run_dir")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                        help="values of one option; every combination is a setting (repeatable). "
                             "Values are read as --set reads them; commas inside [...] or quotes "
                             "do not split: --grid \"loss_function=['clip'],['clip','bal']\"")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:KEY=V[,KEY=V]",
                        help="a named setting (repeatable); combined with every --grid combination")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds, each a run (default 0)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config option for every run (repeatable)")
    parser.add_argument("--gpus", help="comma-separated GPU ids to run on, one run each at a time "
                                       "(default: every visible GPU when the config's device allows CUDA)")
    parser.add_argument("--search", type=int, metavar="N",
                        help="Optuna search until N trials are complete or pruned (needs optuna)")
    parser.add_argument("--range", dest="ranges", action="append", default=[], metavar="KEY=LOW:HIGH[:log]",
                        help="a search range (repeatable; integers when both ends are)")
    parser.add_argument("--keep", choices=("all", "best"), default="all",
                        help="best: a finished run deletes its newest checkpoint (only resuming needs it) and keeps "
                             "its best ones, config.json, metrics.jsonl and events: what the report, test.py, "
                             "predict.py and compare.py read (default: all)")
    parser.add_argument("--estimate", action="store_true",
                        help="only say the disk the sweep's checkpoints will take (with --keep best and without)")
    parser.add_argument("--report", metavar="SWEEP_FOLDER",
                        help="only write the result table and plot of a sweep folder")
    return parser.parse_args(argv)


def sweep(args: argparse.Namespace) -> int:
    from tailclip.tools.sweep import (
        SweepError,
        expand,
        parse_grid,
        parse_range,
        parse_seeds,
        parse_variant,
        run_grid,
        run_search,
        sweep_folder,
    )
    from tailclip.tools.sweep_report import write_report

    if not args.config or not args.name:
        raise SweepError("--config and --name are required (or --report SWEEP_FOLDER)")
    seeds = parse_seeds(args.seeds)
    grid = [parse_grid(text) for text in args.grid]
    if args.search is not None:
        if args.keep != "all":
            raise SweepError("--keep best is for --grid and --variant sweeps, not --search")
        if args.variant:
            raise SweepError("--search takes --range (and --grid choices), not --variant")
        if not args.ranges and not grid:
            raise SweepError("--search needs what to search: --range KEY=LOW:HIGH[:log] (repeatable), "
                             "--grid KEY=V1,V2 choices, or both")
        run_search(args.config, args.sets, [parse_range(text) for text in args.ranges], grid, seeds,
                   args.name, args.search)
        failed = []
    else:
        if args.ranges:
            raise SweepError("--range is for --search")
        settings = expand(grid, [parse_variant(text) for text in args.variant])
        gpus = args.gpus.split(",") if args.gpus else None
        outcomes = run_grid(args.config, args.sets, settings, seeds, args.name, gpus, keep_best=args.keep == "best",
                            estimate_only=args.estimate)
        if args.estimate:
            return 0
        failed = [run for run, outcome in outcomes.items() if outcome in ("failed", "interrupted")]
        if "interrupted" in outcomes.values():
            print("sweep stopped: run the same command again to continue", file=sys.stderr)
            return 130
    for path in write_report(sweep_folder(args.config, args.sets, args.name)):
        print(f"wrote {path}")
    if failed:
        print(f"not finished: {', '.join(failed)} (run the command again to retry)", file=sys.stderr)
    return 1 if failed else 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from tailclip.engine.boundary import run_command  # once the arguments are parsed: imports torch

    return run_command(lambda: _sweep_or_report(args), interrupted="sweep interrupted")


def _sweep_or_report(args: argparse.Namespace) -> int:
    # Imported once the arguments are parsed, so that --help and a usage error answer at once.
    from tailclip.engine.boundary import CommandStopped
    from tailclip.tools.sweep_report import write_report

    try:
        if args.report:
            for path in write_report(args.report):
                print(f"wrote {path}")
            return 0
        return sweep(args)
    except CommandStopped as stopped:  # a run saved and stopped by a signal
        raise CommandStopped(f"{stopped}\nsweep stopped: run the same command again to continue",
                             stopped.signal_number) from None


if __name__ == "__main__":
    sys.exit(main())
