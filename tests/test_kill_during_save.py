"""kill -9 while a checkpoint is being written: the file being replaced keeps its previous,
loadable content, and --resume removes the half-written temporary file and finishes the run.
(tests/test_resume.py kills a run during an epoch.)

The write is made to hang half-way, inside save_atomic's temporary file, by a wrapper that
runs train.py with torch.save replaced; the test kills the process there."""
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.engine.saved_model import model_from_checkpoint
from tiny_dataset import write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
CHECKPOINTS = ["best_valid_mAP.pt", "best_valid_mAP_tail.pt", "newest_train_checkpoint.pt"]

# Runs train.py with torch.save hanging half-way through the first checkpoint of epoch 2.
HANGING_TRAIN = '''
import io, runpy, sys, time
from pathlib import Path
import torch

repo, marker = sys.argv[1], Path(sys.argv[2])
save = torch.save

def save_half_then_hang(obj, f, *args, **kwargs):
    if isinstance(obj, dict) and obj.get("state", {}).get("epoch") == 2:
        data = io.BytesIO()
        save(obj, data, *args, **kwargs)
        f.write(data.getvalue()[:len(data.getvalue()) // 2])
        f.flush()
        marker.touch()
        time.sleep(600)
    return save(obj, f, *args, **kwargs)

torch.save = save_half_then_hang
sys.path.insert(0, repo)
sys.argv = ["train.py", *sys.argv[3:]]
runpy.run_path(f"{repo}/train.py", run_name="__main__")
'''


def test_kill_during_checkpoint_write_then_resume(tmp_path, capsys):
    root = write_dataset(tmp_path / "data")
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs", epochs=2,
                          loss_function=["bal"])
    run_dir = tmp_path / "runs" / "tiny"
    wrapper, marker = tmp_path / "hanging_train.py", tmp_path / "writing"
    wrapper.write_text(HANGING_TRAIN)
    process = subprocess.Popen([sys.executable, str(wrapper), str(REPO), str(marker), f"--config={config}"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), (process.communicate(timeout=10)[1][-3000:] if process.poll() is not None
                             else "hang not reached")
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL

    # The write was cut short in its temporary file; the file it was to replace still holds epoch 1.
    [partial] = run_dir.glob(".*.pt.*.tmp")
    target = partial.name[1:partial.name.index(".pt.") + 3]
    assert target in CHECKPOINTS
    for name in CHECKPOINTS:
        assert load_checkpoint(run_dir / name)["state"]["epoch"] == 1

    train_main = runpy.run_path(str(REPO / "train.py"))["main"]
    assert train_main([f"--config={config}", "--resume"]) == 0
    assert f"removed {partial}" in capsys.readouterr().out
    assert not list(run_dir.glob(".*.tmp"))
    start, *records = read_metrics(run_dir)
    assert [record["epoch"] for record in (start, *records)] == [0, 1, 2]
    assert load_checkpoint(run_dir / CHECKPOINTS[2])["state"]["epoch"] == 2
    # The best checkpoints are those of the best logged epochs, and usable on their own.
    images = torch.randn(2, 3, 64, 64)
    for name, key in zip(CHECKPOINTS[:2], ("val/mAP", "val/mAP_tail")):
        checkpoint = load_checkpoint(run_dir / name)
        assert checkpoint["state"]["epoch"] == max(records, key=lambda r: r[key])["epoch"]
        model, _ = model_from_checkpoint(checkpoint, run_dir / name)
        with torch.no_grad():
            assert torch.isfinite(model.predict_logits(images)).all()
