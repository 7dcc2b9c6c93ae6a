"""A wrong model choice stops every command line in one line (exit 1, no traceback) when the
config is checked, before any data is read; sweep.py checks every setting before its first
run; and a launch that fails leaves no empty run folder behind."""
import re
import runpy
from pathlib import Path

import pytest

from tailclip.config import Config, ConfigError
from tiny_dataset import write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]

# (override on configs/demo.py (ViT-tiny at 32 pixels, interpolated), what the message says)
BAD_CHOICES = {
    "size_not_a_multiple_of_the_patch": ("size=33", "size: 33 is not a multiple of ViT-tiny's patch size 16; "
                                                    "set size = 32 or 48"),
    "unknown_model": ("model_name=ViT-B/17", "model_name: unknown CLIP model 'ViT-B/17'; close matches: ViT-B/16"),
    "interpolation_on_a_resnet": ("model_name=RN-tiny", "interpolate_pos_embedding: works on Vision "
                                                        "Transformers only; RN-tiny is a ResNet"),
    "unknown_open_clip_model": ("model_name=open_clip:ViT-B-17",
                                "model_name: unknown open_clip model 'ViT-B-17'; close matches: ViT-B-16"),
}


def demo_args(tmp_path: Path, override: str) -> list[str]:
    # The demo data would be generated into data_root: it must still be absent after the error.
    return ["--config=configs/demo.py", "--set", f"data_root={tmp_path / 'data'}",
            "--set", f"run_dir={tmp_path / 'runs'}", "--set", "pretrained=False", "--set", override]


@pytest.mark.parametrize("case", BAD_CHOICES)
@pytest.mark.parametrize("script", ["train.py", "test.py"])
def test_bad_model_choice_is_one_line_before_any_data(script, case, tmp_path, capsys):
    override, message = BAD_CHOICES[case]
    extra = ["--zeroshot"] if script == "test.py" else []
    assert runpy.run_path(str(REPO / script))["main"]([*demo_args(tmp_path, override), *extra]) == 1
    stderr = capsys.readouterr().err
    assert stderr.startswith("error: ") and message in stderr
    assert stderr.count("\n") == 1
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("options, message", [
    ({"model_name": "ViT-B/16", "size": 32}, "size: ViT-B/16 takes 224-pixel images, not 32; set size = 224, "
                                             "or interpolate_pos_embedding = True"),
    ({"model_name": "RN-tiny", "size": 32}, "size: RN-tiny takes 64-pixel images, not 32; set size = 64"),
    ({"model_name": "RN-tiny", "size": 64, "finetune": "prompt+visual"},
     "finetune: 'prompt+visual' needs a Vision Transformer; RN-tiny is a ResNet"),
    ({"model_name": "ViT-tiny", "size": 8, "interpolate_pos_embedding": True},
     "size: 8 is not a multiple of ViT-tiny's patch size 16; set size = 16 or 32"),
    ({"model_name": "vit-b/16"}, "model_name: unknown CLIP model 'vit-b/16'; close matches: ViT-B/16"),
])
def test_config_checks_the_architecture(options, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        Config(**options)


@pytest.mark.parametrize("grid, message", [
    ("model_name=ViT-tiny,ViT-B/17", "unknown CLIP model 'ViT-B/17'"),
    ("size=32,33", "33 is not a multiple of ViT-tiny's patch size 16"),
])
def test_sweep_checks_every_setting_before_the_first_run(grid, message, tmp_path, capsys):
    sweep_main = runpy.run_path(str(REPO / "sweep.py"))["main"]
    args = ["--config=configs/demo.py", "--name=bad", "--grid", grid, "--set", "epochs=1",
            "--set", f"data_root={tmp_path / 'data'}", "--set", f"run_dir={tmp_path / 'runs'}"]
    assert sweep_main(args) == 1
    stderr = capsys.readouterr().err
    assert message in stderr and stderr.startswith("error: ")
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


def test_failed_launch_leaves_no_empty_run_folder(train_main, tmp_path, capsys):
    root = write_dataset(tmp_path / "data")
    (root / "images/train/00.jpg").unlink()  # found missing once the run has its folder
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs" / "nested")
    assert train_main([f"--config={config}"]) == 1
    assert "1 of 24 images listed in the splits is missing" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
