"""The run folder ``<run_dir>/<run name>/``: the files a run keeps there, and who may write
into it.

A training claims the folder by taking its lock (`tailclip.engine.run_lock`). A new (not resumed)
training refuses a folder that holds an earlier run unless told to overwrite it, and then
deletes that run's files first. A resumed one continues from the newest checkpoint, or else
the most recent best one, of the run whose files the folder holds (`check_same_run`).
The run's files are views of its checkpoint, rewritten from it where they are behind it or
damaged (`restore_run_files`).
"""
import contextlib
import json
from pathlib import Path

from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.distributed import is_main_process, main_process_outcome
from tailclip.engine.logger import (
    CONFIG_FILE,
    METRICS_FILE,
    RUN_ID,
    STEPS_DIR,
    read_metrics,
    read_run_id,
    restore_config,
    restore_metrics,
    say,
)
from tailclip.engine.run_lock import RunFolderError, RunLock

BEST_MAP_CHECKPOINT = "best_valid_mAP.pt"
BEST_TAIL_CHECKPOINT = "best_valid_mAP_tail.pt"
NEWEST_CHECKPOINT = "newest_train_checkpoint.pt"
# A folder holds a run once any of these exists; --overwrite deletes them and the run's other
# outputs (its config, unfinished writes, test.py's reports, charts and thresholds, compare.py's
# comparison and the authors' runs it exported).
RUN_RECORDS = ("*.pt", METRICS_FILE, "events.out.tfevents.*", f"{STEPS_DIR}/events.out.tfevents.*")
RUN_OUTPUTS = (*RUN_RECORDS, CONFIG_FILE, ".*.tmp", "test_*.json",
               "per_class_ap*.png", "thresholds_*.json", "comparison.md", "comparison.json", "comparison.png",
               "authors/*/events.out.tfevents.*")


def resume_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint that ``--resume`` continues from: ``newest_train_checkpoint.pt``, or,
    for a run that never wrote it (its first write failed, ``save_newest_checkpoint =
    False``, or a sweep's ``--keep best`` deleted it), the most recent best checkpoint (the
    weights and progress of its epoch, not the optimiser: `training_state.restore_training`
    says what a resume from it lacks); None when the folder holds no checkpoint."""
    if (run_dir / NEWEST_CHECKPOINT).is_file():
        return run_dir / NEWEST_CHECKPOINT
    best = [run_dir / name for name in (BEST_MAP_CHECKPOINT, BEST_TAIL_CHECKPOINT) if (run_dir / name).is_file()]
    return max(best, key=lambda path: path.stat().st_mtime_ns) if best else None


RESTART_ADVICE = "start the run again with --overwrite (deletes its logs)"


def check_same_run(run_dir: Path, checkpoint: dict, path: Path) -> None:
    """Refuse the checkpoint ``path`` when it is another run's than the files in ``run_dir``
    (a checkpoint copied from another run folder): continuing it would mix two runs in one
    folder's logs. Files or checkpoints without a run id (older ones) are not checked."""
    theirs, ours = checkpoint["state"].get(RUN_ID), read_run_id(run_dir)
    if theirs and ours and theirs != ours:
        raise RunFolderError(
            f"cannot resume {run_dir}: {path.name} is run {theirs}'s (trained in "
            f"{checkpoint['config'].get('run_dir')}), but the folder's {CONFIG_FILE} and {METRICS_FILE} "
            f"are run {ours}'s; nothing was changed. Put back that run's own checkpoint, or "
            f"{RESTART_ADVICE}")


def restore_run_files(run_dir: Path, checkpoint: dict | None = None, path: Path | None = None) -> None:
    """Rewrite ``metrics.jsonl`` and ``config.json`` from the run's checkpoint (``checkpoint``
    read from ``path``, or else its resume checkpoint) where they are behind it or damaged,
    saying so; the epochs they hold after the checkpoint's are kept. Without a checkpoint
    given, a run whose files are whole (its config readable, a record of every epoch to its
    last, of its own id) is left without reading one. A folder that a training holds is
    left to it."""
    if checkpoint is None:
        path = resume_checkpoint(run_dir)
        if path is None or _whole_and_finished(run_dir):
            return
        checkpoint = load_checkpoint(path)
    check_same_run(run_dir, checkpoint, path)
    state = checkpoint["state"]
    if not state.get("records"):
        return  # written before checkpoints kept the run's records: its files are all there is
    if not is_main_process():
        return
    try:
        lock = RunLock.take(run_dir)
    except RunFolderError:
        return
    try:
        restore_metrics(run_dir, state["records"], later=True)
        if restore_config(run_dir, checkpoint["config"], state[RUN_ID]):
            say(f"{run_dir / CONFIG_FILE} was missing, damaged or another run's: rewritten from {path.name}")
    finally:
        lock.release()


def _whole_and_finished(run_dir: Path) -> bool:
    try:
        config = json.loads((run_dir / CONFIG_FILE).read_text())
        records = read_metrics(run_dir)
    except (OSError, ValueError):
        return False
    if not isinstance(config, dict) or not isinstance(config.get("epochs"), int):
        return False
    return ([record.get("epoch") for record in records] == list(range(config["epochs"] + 1))
            and all(record.get(RUN_ID) == config.get(RUN_ID) for record in records))


def how_to_go_on(run_dir: Path) -> str:
    """What the user can do with the run in ``run_dir``, as its files allow."""
    if resume_checkpoint(run_dir) is not None:
        return "continue it with --resume"
    return f"{RESTART_ADVICE}: it has no checkpoint to resume from"


def run_files(run_dir: Path, patterns=RUN_RECORDS) -> list[Path]:
    """The files in ``run_dir`` that match ``patterns``, sorted."""
    return sorted({path for pattern in patterns for path in run_dir.glob(pattern) if path.is_file()})


def _claim(run_dir: Path, resume: bool, overwrite: bool) -> RunLock:
    lock = RunLock.take(run_dir)
    try:
        if not resume:
            _clear_for_new_run(run_dir, overwrite)
    except BaseException:
        lock.release()
        raise
    return lock


def _clear_for_new_run(run_dir: Path, overwrite: bool) -> None:
    earlier = run_files(run_dir)
    if earlier and not overwrite:
        names = ", ".join(path.name for path in earlier[:3]) + (", ..." if len(earlier) > 3 else "")
        if resume_checkpoint(run_dir) is None:
            raise RunFolderError(
                f"{run_dir} holds an earlier run ({names}) that stopped before its first "
                f"checkpoint; nothing was changed. To go on, {RESTART_ADVICE}, or start another "
                "run with --run-name NAME")
        raise RunFolderError(
            f"{run_dir} holds an earlier run ({names}); nothing was changed. Continue it with "
            "--resume, start another run with --run-name NAME, or replace it with --overwrite "
            "(deletes its checkpoints and logs)")
    removed = run_files(run_dir, RUN_OUTPUTS) if earlier else []
    for path in removed:
        path.unlink()
    if removed:
        say(f"--overwrite: deleted the earlier run's {len(removed)} files in {run_dir}")


@contextlib.contextmanager
def claimed_run_folder(run_dir: Path, resume: bool, overwrite: bool):
    """Hold ``run_dir`` for one training: its lock taken (by the main process only, under
    torchrun; the others wait for it), and for a new run, the folder checked, and an
    earlier run's files deleted when ``overwrite``. A `RunFolderError` is raised in every
    process. The folders the claim created are removed again when the training leaves them
    empty: a launch that failed before its run started leaves no trace."""
    created = [folder for folder in (run_dir, *run_dir.parents) if not folder.exists()]
    lock = main_process_outcome(lambda: _claim(run_dir, resume, overwrite))
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
            _remove_empty(created)


def _remove_empty(folders: list[Path]) -> None:
    """Remove each folder, innermost first, as long as it is empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # holds the run's files (or is gone)
            return
