"""SIGHUP (the terminal or remote connection closing) stops a training as SIGTERM does: at
the next step boundary, with the newest checkpoint saved, exit 129 and a line that says so; in the middle
of an epoch, and while the first checkpoint is being written (the run is then resumable, not
to start again). Tiny custom dataset, 2 steps per epoch, CPU."""
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

from interrupt import ctrl_c_on_forward_call
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics

REPO = Path(__file__).resolve().parents[1]
NEWEST = "newest_train_checkpoint.pt"

# Runs train.py with torch.save held half-way through the first checkpoint (epoch 1) until
# the file named by argv[3] exists.
HELD_FIRST_SAVE = '''
import io, runpy, sys, time
from pathlib import Path
import torch

repo, writing, go_on = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
save = torch.save

def save_held_half_way(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and not writing.exists():
        data = io.BytesIO()
        save(obj, data, *args, **kwargs)
        f.write(data.getvalue()[:len(data.getvalue()) // 2])
        writing.touch()
        while not go_on.exists():
            time.sleep(0.05)
        f.seek(0)
        f.truncate()
    return save(obj, f, *args, **kwargs)

torch.save = save_held_half_way
sys.path.insert(0, repo)
sys.argv = ["train.py", *sys.argv[4:]]
runpy.run_path(f"{repo}/train.py", run_name="__main__")
'''


def test_sighup_mid_epoch_saves_and_resumes(train_main, tiny_config, tmp_path, monkeypatch, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    ctrl_c_on_forward_call(monkeypatch, 3, signal.SIGHUP)  # epoch 2, step 1 (2 steps per epoch)
    assert train_main([f"--config={tiny_config}"]) == 128 + signal.SIGHUP
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert f"stopped by SIGHUP after epoch 1, step 1 of epoch 2; saved {run_dir / NEWEST}" in err
    state = load_checkpoint(run_dir / NEWEST)["state"]
    assert (state["epoch"], state["step_in_epoch"]) == (1, 1)
    assert train_main([f"--config={tiny_config}", "--resume"]) == 0
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1, 2]


def test_sighup_during_the_first_checkpoint_write_leaves_a_resumable_run(tiny_config, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "tiny"
    wrapper, writing, go_on = tmp_path / "held_save.py", tmp_path / "writing", tmp_path / "go_on"
    wrapper.write_text(HELD_FIRST_SAVE)
    process = subprocess.Popen([sys.executable, str(wrapper), str(REPO), str(writing), str(go_on),
                                f"--config={tiny_config}"], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while not writing.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert writing.exists(), process.communicate(timeout=10)[1][-3000:] if process.poll() is not None else "hang"
    process.send_signal(signal.SIGHUP)
    time.sleep(0.5)  # the handler runs while the write is held
    go_on.touch()
    err = process.communicate(timeout=120)[1]
    assert process.returncode == 128 + signal.SIGHUP, err[-3000:]
    assert f"stopped by SIGHUP after epoch 1; saved {run_dir / NEWEST} (continue with --resume)" in err
    assert "Traceback" not in err
    assert load_checkpoint(run_dir / NEWEST)["state"]["epoch"] == 1
    train_main = runpy.run_path(str(REPO / "train.py"))["main"]
    assert train_main([f"--config={tiny_config}", "--resume"]) == 0
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1, 2]
