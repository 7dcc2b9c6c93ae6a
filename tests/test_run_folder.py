"""The run folder: an earlier run is never overwritten by accident, one training at a time
holds the folder (lock file), and --resume of a complete run changes nothing. Trainings run
train.py's main on the tiny dataset, in this process; the lock's other holders are real
processes."""
import datetime
import errno
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tailclip.engine import run_folder, training_state
from tailclip.engine.checkpoint import rng_states
from tailclip.engine.logger import read_metrics
from tailclip.engine.run_folder import claimed_run_folder
from tailclip.engine.run_lock import LOCK_FILE, RunFolderError, RunLock
from tailclip.engine.stop_signals import StopSignals
from tailclip.errors import TailCLIPError
from tiny_dataset import write_config, write_dataset


@pytest.fixture(scope="module")
def finished_run(train_main, tmp_path_factory):
    """A complete one-epoch run: (config file, run folder)."""
    folder = tmp_path_factory.mktemp("finished")
    config = write_config(folder / "tiny.py", write_dataset(folder / "data"), folder / "runs",
                          loss_function=["bal"])
    assert train_main([f"--config={config}"]) == 0
    return config, folder / "runs" / "tiny"


def snapshot(folder: Path) -> dict:
    """Every file's size, modification time and content hash, by its path in ``folder``
    (``steps/`` holds the per-step curves' events)."""
    return {path.relative_to(folder).as_posix(): (path.stat().st_size, path.stat().st_mtime_ns,
                                                  hashlib.sha256(path.read_bytes()).hexdigest())
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_new_run_in_a_folder_with_a_run_is_refused_and_changes_nothing(train_main, finished_run, capsys):
    config, run_dir = finished_run
    before = snapshot(run_dir)
    capsys.readouterr()
    assert train_main([f"--config={config}"]) == 1
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "Traceback" not in message
    assert f"{run_dir} holds an earlier run" in message
    for way_on in ("--resume", "--run-name NAME", "--overwrite"):
        assert way_on in message
    assert snapshot(run_dir) == before  # no new events file, config.json or lock left behind

    with pytest.raises(SystemExit) as exit_info:  # argparse: they exclude each other
        train_main([f"--config={config}", "--resume", "--overwrite"])
    assert exit_info.value.code == 2


def test_resume_of_a_complete_run_changes_nothing(train_main, finished_run, capsys):
    config, run_dir = finished_run
    before = snapshot(run_dir)
    capsys.readouterr()
    assert train_main([f"--config={config}", "--resume"]) == 0
    assert f"{run_dir} is complete: 1 of 1 epochs" in capsys.readouterr().out
    assert snapshot(run_dir) == before


def test_overwrite_replaces_the_earlier_run(train_main, finished_run, tmp_path, capsys):
    config, finished = finished_run
    run_dir = tmp_path / "runs" / "tiny"
    shutil.copytree(finished, run_dir)
    (run_dir / "test_best_valid_mAP.json").write_text("{}")  # test.py's report of the old run
    (run_dir / "notes.txt").write_text("mine")  # not a run's file: kept
    before = snapshot(run_dir)
    assert train_main([f"--config={config}", "--set", f"run_dir={tmp_path / 'runs'}", "--overwrite"]) == 0
    assert "--overwrite: deleted the earlier run's 8 files" in capsys.readouterr().out
    after = snapshot(run_dir)
    assert "test_best_valid_mAP.json" not in after and after["notes.txt"] == before["notes.txt"]
    old_events = {name for name in before if name.startswith("events.out.tfevents.")}
    assert len(old_events) == 1 and not old_events & set(after)
    assert len([name for name in after if name.startswith("events.out.tfevents.")]) == 1
    old_steps = {name for name in before if name.startswith("steps/events.out.tfevents.")}
    assert len(old_steps) == 1 and not old_steps & set(after)
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1]  # epoch 0: before training
    for name in ("newest_train_checkpoint.pt", "best_valid_mAP.pt", "config.json"):
        assert after[name][1] > before[name][1], name  # written again
    assert LOCK_FILE not in after


def write_lock(run_dir: Path, host: str, pid: int, started: str | None = None) -> Path:
    """A lock as the training ``pid`` writes it, by default now (after that process started)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    started = started or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    path.write_text(json.dumps({"host": host, "pid": pid, "started": started}))
    return path


def finished_process_id() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_a_live_holder_refuses_and_a_dead_one_is_stale(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock_path = write_lock(run_dir, socket.gethostname(), holder.pid)
        content = lock_path.read_text()
        with pytest.raises(RunFolderError, match=f"{run_dir} is in use by another training: "
                                                 f"process {holder.pid} on host {socket.gethostname()}"):
            RunLock.take(run_dir)
        assert lock_path.read_text() == content
    finally:
        holder.kill()
        holder.wait()
    lock = RunLock.take(run_dir)  # the holder is gone: its lock is stale
    assert f"removed the stale lock {lock_path} of process {holder.pid}" in capsys.readouterr().out
    assert json.loads(lock_path.read_text())["pid"] == os.getpid()
    with pytest.raises(RunFolderError, match=f"process {os.getpid()}"):  # held: a second take fails
        RunLock.take(run_dir)
    lock.release()
    assert not lock_path.exists()
    # Our own process id, in a lock that this process does not hold: an earlier process's
    # (a restarted container gives the training the same id).
    write_lock(run_dir, socket.gethostname(), os.getpid())
    RunLock.take(run_dir).release()
    assert "which no longer runs" in capsys.readouterr().out


def test_a_lock_from_another_host_or_unreadable_is_left_to_the_user(tmp_path):
    run_dir = tmp_path / "run"
    lock_path = write_lock(run_dir, "another-node", finished_process_id())
    with pytest.raises(RunFolderError, match=f"on host another-node .*never removed automatically: "
                                             f"if that run is dead, delete {lock_path} by hand"):
        RunLock.take(run_dir)
    lock_path.write_text("")  # just created by a training that is writing it: may be in use
    with pytest.raises(RunFolderError, match=f"lock file {lock_path} cannot be read"):
        RunLock.take(run_dir)
    assert lock_path.exists()


def test_an_unreadable_lock_that_nobody_writes_is_stale(tmp_path, capsys):
    run_dir = tmp_path / "run"
    lock_path = write_lock(run_dir, socket.gethostname(), os.getpid())
    for content in ("", '{"host": "'):  # a training killed, or out of space, while writing it
        lock_path.write_text(content)
        long_ago = time.time() - 60
        os.utime(lock_path, (long_ago, long_ago))
        RunLock.take(run_dir).release()
        assert f"removed the stale lock {lock_path}: empty or unreadable" in capsys.readouterr().out
        assert not lock_path.exists()


def test_a_lock_that_cannot_be_written_is_removed(tmp_path, monkeypatch):
    run_dir = tmp_path / "run"

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(json, "dump", disk_full)
    with pytest.raises(TailCLIPError, match=f"cannot write {run_dir / LOCK_FILE}: no space left"):
        RunLock.take(run_dir)
    monkeypatch.undo()
    assert not (run_dir / LOCK_FILE).exists()
    RunLock.take(run_dir).release()


def test_the_lock_is_released_on_sigterm_and_on_errors(tmp_path):
    run_dir = tmp_path / "run"
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_info:
        with StopSignals(), claimed_run_folder(run_dir, resume=False, overwrite=False):  # as a training holds it
            assert (run_dir / LOCK_FILE).exists()
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler interrupts this
    assert exit_info.value.code == 128 + signal.SIGTERM
    assert not (run_dir / LOCK_FILE).exists()
    assert signal.getsignal(signal.SIGTERM) is previous

    with pytest.raises(ZeroDivisionError):
        with claimed_run_folder(run_dir, resume=False, overwrite=False):
            raise ZeroDivisionError
    assert not (run_dir / LOCK_FILE).exists()


def test_a_run_is_recognised_by_its_checkpoints_metrics_or_events(tmp_path):
    assert run_folder.run_files(tmp_path) == []
    (tmp_path / "config.json").write_text("{}")  # a config alone is no run
    (tmp_path / "test_zeroshot.json").write_text("{}")  # nor a zero-shot test
    assert run_folder.run_files(tmp_path) == []
    for name in ("metrics.jsonl", "events.out.tfevents.1.host.2.0", "best_valid_mAP.pt"):
        (tmp_path / name).write_text("")
    assert [path.name for path in run_folder.run_files(tmp_path)] == [
        "best_valid_mAP.pt", "events.out.tfevents.1.host.2.0", "metrics.jsonl"]


def test_each_process_takes_back_its_own_random_states(monkeypatch):
    torch.manual_seed(1)
    first, first_draw = rng_states(), torch.rand(3)
    torch.manual_seed(2)
    second, second_draw = rng_states(), torch.rand(3)
    monkeypatch.setattr(training_state, "rank_and_world", lambda: (1, 2))  # process 1 of 2
    training_state._restore_process_rng([first, second])
    assert torch.equal(torch.rand(3), second_draw)
    monkeypatch.setattr(training_state, "rank_and_world", lambda: (0, 1))
    training_state._restore_process_rng(first)  # a checkpoint from before per-process states
    assert torch.equal(torch.rand(3), first_draw)
