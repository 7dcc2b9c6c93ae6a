"""What a new user meets after the README's set-up: evaluation with the test images alone,
the helper scripts in the project's environment, help texts and messages that read right,
and the surprises of custom data (non-Latin class names, a batch larger than the split,
Ctrl-C with DataLoader workers)."""
import os
import runpy
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

import tailclip.engine.stop_signals
import tailclip.engine.training
from tailclip.config import ConfigError, load_config, parse_override
from tailclip.data import build_data
from tailclip.engine import visualize
from tailclip.engine.batches import build_split_batches
from tailclip.tools.sweep import SweepError, parse_grid
from tailclip.wording import count
from tiny_dataset import write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
# The tiny test split has no single-label image of some classes (test.py's subsets).
pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no positive image")


def script_main(name: str):
    return runpy.run_path(str(REPO / name))["main"]


def test_test_py_needs_only_the_test_images(tmp_path, capsys):
    root = write_dataset(tmp_path / "data")
    for image in (root / "images" / "train").iterdir():
        image.unlink()
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs")
    assert script_main("test.py")([f"--config={config}", "--zeroshot"]) == 0
    assert "zeroshot (epoch 0): ViT-tiny on the custom test split, 8 images" in capsys.readouterr().out
    # Training still needs them, and says which.
    assert script_main("train.py")([f"--config={config}"]) == 1
    assert "16 of 24 images listed in the splits are missing" in capsys.readouterr().err


def test_one_missing_image_reads_in_the_singular(tmp_path, capsys):
    root = write_dataset(tmp_path / "data")
    (root / "images/test/03.jpg").unlink()
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs")
    assert script_main("test.py")([f"--config={config}", "--zeroshot"]) == 1
    assert (f"1 of 8 images listed in the splits is missing under {root}; it is:\n  "
            f"{root / 'images/test/03.jpg'}\n") in capsys.readouterr().err


def test_ablation_script_uses_the_projects_python_not_the_one_on_path(tmp_path):
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'No module named torch' >&2\nexit 1\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake.parent}:{os.environ['PATH']}"}
    env.pop("PYTHON", None)
    result = subprocess.run(["bash", "scripts/ablation_demo.sh", "--help"], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage: sweep.py" in result.stdout


@pytest.mark.parametrize("script", ["train.py", "test.py", "predict.py", "sweep.py"])
def test_help_has_no_markup(script, capsys):
    with pytest.raises(SystemExit) as exit:
        script_main(script)(["--help"])
    assert exit.value.code == 0
    assert "``" not in capsys.readouterr().out


def test_bench_help_answers_without_building_models(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["open_clip_backbones.py"])
    with pytest.raises(SystemExit) as exit:
        script_main("bench/open_clip_backbones.py")(["--help"])
    out = capsys.readouterr().out
    assert exit.value.code == 0 and out.startswith("usage: open_clip_backbones.py")
    assert "| model_name |" not in out


def test_counts_read_in_the_singular_and_plural():
    assert [count(1, "epoch"), count(2, "epoch"), count(0, "image")] == ["1 epoch", "2 epochs", "0 images"]
    assert count(1, "entry", "entries") == "1 entry" and count(3, "entry", "entries") == "3 entries"


def test_config_folder_names_its_files(tmp_path):
    (tmp_path / "a.py").write_text("class CFG:\n    pass\n")
    with pytest.raises(ConfigError, match=f"^{tmp_path} is a folder, not a config file; give one of its files: a.py$"):
        load_config(tmp_path)


def test_grid_value_out_of_range_is_named_as_given():
    with pytest.raises(SweepError, match=r"^--grid lr=1e-3,-1: lr: must be > 0, got -1.0$"):
        parse_grid("lr=1e-3,-1")


def test_quoted_text_reads_the_same_for_every_text_option():
    assert parse_override('pretrained="/path/x.pt"') == ("pretrained", "/path/x.pt")
    assert parse_override("pretrained='dfn5b'") == ("pretrained", "dfn5b")
    assert parse_override('model_name="ViT-B/16"') == ("model_name", "ViT-B/16")
    assert parse_override("pretrained=/path/x.pt") == ("pretrained", "/path/x.pt")


def test_pretrained_that_names_no_file_names_the_option(tmp_path, capsys):
    root = write_dataset(tmp_path / "data")
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs")
    assert script_main("train.py")([f"--config={config}", "--set", "pretrained=maybe"]) == 1
    assert capsys.readouterr().err == (
        "error: pretrained = 'maybe' is not a checkpoint file; for ViT-tiny pretrained is True (OpenAI's "
        "weights), False (random ones) or the path of a checkpoint file\n")


def test_non_latin_class_names_warn_once(tmp_path, monkeypatch):
    monkeypatch.setattr(visualize, "_reported_characters", set())
    names = ["猫", "犬", "cat"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            visualize.save_per_class_ap_png(tmp_path / "ap.png", [0.5, 0.2, 0.1], names,
                                            {"head": [0], "medium": [1], "tail": [2]})
    messages = [str(warning.message) for warning in caught]
    assert messages == ["the charts' font lacks 2 characters of the class names (犬猫); they are drawn "
                        "as empty boxes (the names are intact in every file)"]


def test_ctrl_c_in_a_forked_worker_is_left_to_the_training_process(monkeypatch, capsys):
    stop = tailclip.engine.stop_signals.StopSignals()
    with stop:
        stop.defer()  # training: a signal is a request to stop at a step boundary
        pid = os.getpid()
        monkeypatch.setattr(tailclip.engine.stop_signals.os, "getpid", lambda: pid + 1)  # as in a worker
        stop._handle(signal.SIGINT, None)
        assert not stop.requested and capsys.readouterr().out == ""
        monkeypatch.setattr(tailclip.engine.stop_signals.os, "getpid", lambda: pid)
        stop._handle(signal.SIGINT, None)
        assert stop.requested and capsys.readouterr().out.count("SIGINT: stopping") == 1


def test_batch_larger_than_the_training_split_is_said(tmp_path, capsys):
    root = write_dataset(tmp_path / "data")
    cfg = load_config(write_config(tmp_path / "tiny.py", root, tmp_path / "runs", batch_size=64,
                                   image_cache=False))
    build_split_batches(cfg, build_data(cfg), train=True, device=torch.device("cpu"))
    assert ("warning: batch_size = 64 is more than the 16 training images: each epoch is one step "
            "of 16 images") in capsys.readouterr().out


def test_readme_says_how_to_install_the_cpu_build_of_the_pinned_torch():
    pins = dict(line.split("==") for line in (REPO / "requirements.txt").read_text().splitlines()
                if line.startswith(("torch==", "torchvision==")))
    readme = (REPO / "README.md").read_text()
    assert (f".venv/bin/pip install torch=={pins['torch']} torchvision=={pins['torchvision']} "
            "--index-url https://download.pytorch.org/whl/cpu") in readme
    # The two set-up commands stay as they are.
    assert ("python3 -m venv .venv && .venv/bin/pip install -r requirements.txt -r requirements-dev.txt "
            "&& .venv/bin/python train.py --config=configs/demo.py\n.venv/bin/python -m pytest -q tests\n") in readme
