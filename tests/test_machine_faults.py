"""What the machine does to a run, each in one line with the way on (exit 1), never a
traceback: a folder it will not let us write (read-only, a path through a file, /proc),
found before data and model are built where it can be, and met mid-run with the earlier
checkpoints intact; a DataLoader worker killed (as the out-of-memory killer does), saved at
the last step boundary; running out of memory in a training step or an evaluation.

Tests run as root, which chmod does not stop: a read-only disk is simulated by refusing,
with EROFS, every write under a folder (`read_only`). Tiny custom dataset, 2 steps per
epoch, CPU, in this process."""
import builtins
import errno
import io
import multiprocessing
import os
import runpy
import signal
import time
from pathlib import Path

import pytest
import torch

import tailclip.engine.setup
import tailclip.engine.training
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.engine.run_lock import LOCK_FILE
from tailclip.model import TailCLIP
from tiny_dataset import write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
NEWEST = "newest_train_checkpoint.pt"
CHECKPOINTS = ("best_valid_mAP.pt", "best_valid_mAP_tail.pt", NEWEST)


def read_only(monkeypatch, folder: Path) -> None:
    """Refuse with EROFS, as a read-only disk does, whatever would create, change or delete a
    file under ``folder``."""
    folder = os.path.abspath(folder)

    def refused(path) -> bool:
        return os.path.abspath(os.fspath(path)).startswith(folder) if isinstance(path, (str, Path)) else False

    def guard(function, writes=lambda *args, **kwargs: True):
        def guarded(path, *args, **kwargs):
            if refused(path) and writes(*args, **kwargs):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))
            return function(path, *args, **kwargs)
        return guarded

    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    monkeypatch.setattr(os, "open", guard(os.open, lambda flags, *a, **k: flags & write_flags))
    opener = guard(builtins.open, lambda mode="r", *a, **k: any(c in mode for c in "wax+"))
    monkeypatch.setattr(builtins, "open", opener)
    monkeypatch.setattr(io, "open", opener)
    for name in ("mkdir", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, guard(getattr(os, name)))
    monkeypatch.setattr(os, "replace", guard(os.replace))


@pytest.fixture
def nothing_built(monkeypatch):
    """Fails the test if the data (and so the model) gets built."""
    def build_data(*args, **kwargs):
        raise AssertionError("the data was built before the folder was checked")

    monkeypatch.setattr(tailclip.engine.setup, "build_data", build_data)


@pytest.fixture(scope="module")
def test_main():
    return runpy.run_path(str(REPO / "test.py"))["main"]


def one_error_line(capsys) -> str:
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ")
    return line


def test_a_run_dir_through_a_file_is_one_line_before_anything_is_built(train_main, tiny_config, tmp_path,
                                                                         capsys, nothing_built):
    (tmp_path / "afile").write_text("")
    assert train_main([f"--config={tiny_config}", "--set", f"run_dir={tmp_path / 'afile' / 'runs'}"]) == 1
    assert one_error_line(capsys) == (
        f"error: cannot write the run folder {tmp_path / 'afile' / 'runs' / 'tiny'}: Not a directory (in "
        f"{tmp_path / 'afile'}); a part of its path is a file, not a folder: use another folder "
        "(--set run_dir=PATH)")


def test_a_run_dir_in_proc_is_one_line_before_anything_is_built(train_main, tiny_config, capsys, nothing_built):
    assert train_main([f"--config={tiny_config}", "--set", "run_dir=/proc/runs"]) == 1
    assert one_error_line(capsys).startswith("error: cannot write the run folder /proc/runs/tiny: ")
    assert not Path("/proc/runs").exists()


def test_a_read_only_run_folder_is_one_line_before_anything_is_built(train_main, tiny_config, tmp_path,
                                                                      monkeypatch, capsys, nothing_built):
    (tmp_path / "runs").mkdir()  # where the read-only disk is mounted
    read_only(monkeypatch, tmp_path / "runs")
    assert train_main([f"--config={tiny_config}"]) == 1
    assert one_error_line(capsys) == (
        f"error: cannot write the run folder {tmp_path / 'runs' / 'tiny'}: Read-only file system (in "
        f"{tmp_path / 'runs'}); its disk is read-only: use a folder on a writable disk (--set run_dir=PATH)")


def test_test_py_on_a_read_only_folder_is_one_line_before_anything_is_built(test_main, tiny_config, tmp_path,
                                                                             monkeypatch, capsys, nothing_built):
    (tmp_path / "runs" / "tiny").mkdir(parents=True)
    read_only(monkeypatch, tmp_path / "runs")
    assert test_main([f"--config={tiny_config}", "--zeroshot"]) == 1
    assert one_error_line(capsys).startswith(
        f"error: cannot write the report folder {tmp_path / 'runs' / 'tiny'}: Read-only file system")


def evaluations_then(monkeypatch, call_number: int, action) -> None:
    """``action()`` as the ``call_number``-th evaluation of the run starts (1: before training)."""
    evaluate, calls = tailclip.engine.training.evaluate_model, []

    def evaluate_after(*args, **kwargs):
        calls.append(None)
        if len(calls) == call_number:
            action()
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(tailclip.engine.training, "evaluate_model", evaluate_after)


def assert_epoch_1_kept(run_dir: Path) -> None:
    for name in CHECKPOINTS:
        assert load_checkpoint(run_dir / name)["state"]["epoch"] == 1


def test_a_folder_made_read_only_mid_run_is_one_line_and_resumes(train_main, tiny_config, tmp_path,
                                                                  monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    evaluations_then(monkeypatch, 3, lambda: read_only(monkeypatch, run_dir))  # after epoch 2's steps
    assert train_main([f"--config={tiny_config}"]) == 1
    monkeypatch.undo()
    assert one_error_line(capsys) == (
        f"error: cannot write {run_dir / 'metrics.jsonl'}: Read-only file system; its disk is read-only: use "
        "a folder on a writable disk, then continue it with --resume")
    assert_epoch_1_kept(run_dir)
    assert train_main([f"--config={tiny_config}", "--resume"]) == 0
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1, 2]


def test_out_of_memory_in_a_training_step_is_one_line(train_main, tiny_config, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    step, calls = tailclip.engine.training.train_step, []

    def out_of_memory_in_epoch_2(*args, **kwargs):
        calls.append(None)
        if len(calls) == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
                                         "capacity of 79.19 GiB of which 1.06 GiB is free.")
        return step(*args, **kwargs)

    monkeypatch.setattr(tailclip.engine.training, "train_step", out_of_memory_in_epoch_2)
    assert train_main([f"--config={tiny_config}"]) == 1
    assert one_error_line(capsys) == (
        "error: out of memory in a training step (CUDA out of memory); it needs less with grad_checkpointing "
        "= True, precision = 'bf16' (a GPU's) or, in a new run, a batch_size below 8; continue it with --resume")
    assert_epoch_1_kept(run_dir)
    assert not (run_dir / LOCK_FILE).exists()


def test_the_cpu_allocator_failing_in_an_evaluation_is_one_line(train_main, tiny_config, tmp_path, monkeypatch,
                                                                capsys):
    def allocator_fails():
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 4000000000 bytes. Error code 12 (Cannot allocate memory)")

    evaluations_then(monkeypatch, 3, allocator_fails)
    assert train_main([f"--config={tiny_config}"]) == 1
    assert one_error_line(capsys) == (
        "error: out of memory in the evaluation after epoch 2 (DefaultCPUAllocator: can't allocate memory: you "
        "tried to allocate 4000000000 bytes); it needs less with an eval_batch_size below 8 or precision = "
        "'bf16' (a GPU's); continue it with --resume")
    assert_epoch_1_kept(tmp_path / "runs" / "tiny")


def test_a_killed_dataloader_worker_saves_at_the_last_step_and_resumes(train_main, tmp_path, monkeypatch, capsys):
    root = write_dataset(tmp_path / "data")
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs", epochs=2, num_threads=1,
                          image_cache=False, num_workers=1)
    run_dir = tmp_path / "runs" / "tiny"
    forward, calls, killed = TailCLIP.forward, [], []

    def forward_while_workers_are_killed(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == 3:  # epoch 2, step 1: the out-of-memory killer ends the workers
            for worker in multiprocessing.active_children():
                killed.append(worker.pid)
                os.kill(worker.pid, signal.SIGKILL)
            time.sleep(0.5)  # their exit reaches this process during the step
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(TailCLIP, "forward", forward_while_workers_are_killed)
    assert train_main([f"--config={config}"]) == 1
    monkeypatch.undo()
    line = one_error_line(capsys)
    assert line.startswith("error: DataLoader worker (pid ") and "killed by signal: Killed" in line, line
    assert any(f"(pid {pid})" in line for pid in killed), (line, killed)
    assert line.endswith(f"fewer num_workers need less memory): stopped after epoch 1, step 1 of epoch 2; "
                         f"saved {run_dir / NEWEST} (continue with --resume)")
    state = load_checkpoint(run_dir / NEWEST)["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    assert train_main([f"--config={config}", "--resume"]) == 0
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1, 2]
