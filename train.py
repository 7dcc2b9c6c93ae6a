"""Train TailCLIP: python train.py --config=configs/demo.py [--set key=value ...] [--resume | --overwrite].

Writes ``<run_dir>/<run name>/``: TensorBoard events, ``metrics.jsonl``, ``config.json`` and
the checkpoints ``best_valid_mAP.pt``, ``best_valid_mAP_tail.pt`` and
``newest_train_checkpoint.pt``. The run name is the config file's stem unless ``--run-name``.
A folder that holds an earlier run is refused (exit 1, nothing changed) unless ``--resume``
continues that run or ``--overwrite`` deletes it first; so is a folder in which another
training runs (its lock file ``.lock`` names the process and host). ``--resume`` continues
the run with its own saved config, changed only by the ``--set`` options given now: ``epochs``
and ``lr`` (the cosine schedule rebuilt from the epoch reached) and those of how it runs
(device, threads, workers, ...); any other is refused in one line. On a complete run it says
so and exits 0.
Several GPUs or nodes: ``torchrun --nproc_per_node=N train.py ...`` (see docs/distributed.md).
Exit codes: 0 done, 1 error (a bad config or input, a non-finite loss, a folder that cannot be
written, no space or memory left, a DataLoader worker that died: saved, continue with
--resume), 130 stopped by Ctrl-C (143 by SIGTERM, 129 by SIGHUP) at any moment, after saving
the newest checkpoint (a second Ctrl-C: at once, nothing saved since the last checkpoint). Progress bars are drawn only
when stderr is a terminal (``TAILCLIP_PROGRESS=1`` or ``0`` forces them on or off); every
epoch prints one line either way.
"""
import argparse
import sys

from tailclip.arguments import ArgumentParser


def parse_args(argv=None) -> argparse.Namespace:
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="a config file defining `class CFG`")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config option (repeatable), e.g. --set epochs=2")
    earlier_run = parser.add_mutually_exclusive_group()
    earlier_run.add_argument("--resume", action="store_true",
                             help="continue the run from its newest_train_checkpoint.pt, with its own "
                                  "config (--set may change epochs, lr and how it runs)")
    earlier_run.add_argument("--overwrite", action="store_true",
                             help="delete the earlier run in the run folder (checkpoints, logs) and start afresh")
    parser.add_argument("--run-name", help="name of the run folder (default: the config's stem; for a run's "
                                           "config.json, its run folder's name)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tailclip.engine.boundary import run_command  # once the arguments are parsed: imports torch

    return run_command(lambda: _train(args), interrupted="interrupted; nothing saved since the last checkpoint")


def _train(args: argparse.Namespace) -> int:
    # Imported once the arguments are parsed, so that --help and a usage error answer at once.
    from tailclip.config import default_run_name, load_config
    from tailclip.engine.distributed import cleanup
    from tailclip.engine.training import train

    try:
        cfg = load_config(args.config, args.overrides)
        train(cfg, args.run_name or default_run_name(args.config), resume=args.resume, overwrite=args.overwrite,
              given_options=[text.partition("=")[0].strip() for text in args.overrides])
    finally:
        cleanup()  # leave the process group of a torchrun launch
    return 0


if __name__ == "__main__":
    sys.exit(main())
