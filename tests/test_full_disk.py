"""A full disk, a file-size limit, or a second Ctrl-C while a file is written: one line naming
the file, earlier files intact, and advice that matches what is in the run folder. A full
disk is simulated without root, by a file-size limit in a subprocess (the kernel refuses the
write with EFBIG as a full disk does with ENOSPC) or by a failing write. Tiny custom dataset."""
import errno
import subprocess
import sys
from pathlib import Path

import torch

import tailclip.engine.checkpoint
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics

REPO = Path(__file__).resolve().parents[1]
NEWEST = "newest_train_checkpoint.pt"

TRAIN_UNDER_FILE_SIZE_LIMIT = """
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = ["train.py", *sys.argv[2:]]
runpy.run_path("train.py", run_name="__main__")
"""


def train_under_limit(limit: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", TRAIN_UNDER_FILE_SIZE_LIMIT, str(limit), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=240)


def test_no_space_for_the_first_checkpoint_is_one_line(tiny_config, tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    # 10 MB: the logs and the image cache fit, a checkpoint (about 40 MB) does not.
    result = train_under_limit(10_000_000, f"--config={tiny_config}")
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"error: cannot write {run_dir / 'best_valid_mAP.pt'}: no space left (File too large); free "
        "some space, then start the run again with --overwrite (deletes its logs): it has no "
        "checkpoint to resume from")
    assert not list(run_dir.glob("*.pt")) and not list(run_dir.glob(".*.tmp")) and not (run_dir / ".lock").exists()
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1]


def test_no_space_for_the_tensorboard_events_is_one_line(tiny_config, tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    result = train_under_limit(30_000, f"--config={tiny_config}", "--set", "image_cache=False")
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    [events] = run_dir.glob("events.out.tfevents.*")
    assert line.startswith(f"error: cannot write {events}: no space left (File too large); free some space")


def test_no_space_for_the_newest_checkpoint_advises_the_resume_that_works(train_main, tiny_config, tmp_path,
                                                                          monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    save, calls = torch.save, []

    def disk_full_at_first_newest(obj, f, *args, **kwargs):
        calls.append(None)
        if len(calls) == 3:  # epoch 1 writes both best checkpoints (the first values), then the newest
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError:  # as torch.save reports a failed write: a RuntimeError, the cause in its context
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(tailclip.engine.checkpoint.torch, "save", disk_full_at_first_newest)
    assert train_main([f"--config={tiny_config}"]) == 1
    monkeypatch.undo()
    assert capsys.readouterr().err.strip() == (
        f"error: cannot write {run_dir / NEWEST}: no space left (No space left on device); free some "
        "space, then continue it with --resume")
    assert not (run_dir / NEWEST).exists()
    assert load_checkpoint(run_dir / "best_valid_mAP.pt")["state"]["epoch"] == 1
    assert train_main([f"--config={tiny_config}", "--resume"]) == 0
    assert "continuing from best_valid_mAP" in capsys.readouterr().out
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1, 2]
    assert load_checkpoint(run_dir / NEWEST)["state"]["epoch"] == 2


def test_ctrl_c_during_a_checkpoint_write_exits_130_with_the_documented_message(train_main, tiny_config,
                                                                                 tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    save = torch.save

    class InterruptedFile:  # a second Ctrl-C arriving while torch.save writes through it
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    def interrupted_in_epoch_2(obj, f, *args, **kwargs):
        return save(obj, InterruptedFile(f) if obj["state"]["epoch"] == 2 else f, *args, **kwargs)

    monkeypatch.setattr(tailclip.engine.checkpoint.torch, "save", interrupted_in_epoch_2)
    assert train_main([f"--config={tiny_config}"]) == 130
    monkeypatch.undo()
    assert capsys.readouterr().err.strip() == "interrupted; nothing saved since the last checkpoint"
    for name in ("best_valid_mAP.pt", NEWEST):
        assert load_checkpoint(run_dir / name)["state"]["epoch"] >= 1
    assert not list(run_dir.glob(".*.tmp")) and not (run_dir / ".lock").exists()
