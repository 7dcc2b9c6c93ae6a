"""dataset = "custom": docs/custom_data.md's example run as written (one
short epoch), and test.py's outputs on a custom test split that lacks a class."""
import json
import math
import re
import runpy
import shlex
from pathlib import Path

import pytest
from PIL import Image

from tailclip.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES
from tailclip.engine.logger import read_metrics
from tiny_dataset import CLASS_NAMES, TEST_LABELS, split_lines, write_config, write_dataset, write_lines

REPO = Path(__file__).resolve().parents[1]
# Only to make the example's run short: one epoch of large steps, the BAL term alone.
SHORT_RUN = ["--set", "epochs=1", "--set", "batch_size=256", "--set", "loss_function=['bal']"]


def documented_example() -> list[tuple[str, str]]:
    """The (language, text) code blocks of docs/custom_data.md."""
    page = (REPO / "docs" / "custom_data.md").read_text()
    return re.findall(r"```(\w+)\n(.*?)```", page, flags=re.DOTALL)


@pytest.fixture(scope="module")
def scripts():
    return {name: runpy.run_path(str(REPO / name))["main"] for name in ("train.py", "test.py", "predict.py")}


def test_documented_custom_dataset_example(scripts, tmp_path, monkeypatch, capsys):
    (_, create), (_, config_text), (_, commands) = documented_example()
    monkeypatch.chdir(REPO)  # the page's commands run from the repository root
    python, flag, code = shlex.split(create.strip())
    assert (python, flag) == ("python", "-c")
    exec(code, {})  # noqa: S102 -- the page's own one-liner

    config = tmp_path / "configs" / "my_data.py"
    config.parent.mkdir()
    config.write_text(config_text)
    runs = tmp_path / "runs"
    lines = commands.strip().splitlines()
    assert len(lines) == 3
    for line in lines:
        python, script, *args = shlex.split(line)
        assert python == "python"
        args = [arg.replace("configs/my_data.py", str(config)).replace("=runs/", f"={runs}/") for arg in args]
        if script == "predict.py":
            args += ["--workers", "0"]
        else:
            args += ["--set", f"run_dir={runs}", *SHORT_RUN]
        capsys.readouterr()
        assert scripts[script](args) == 0, line
        output = capsys.readouterr().out
        if script == "train.py":
            [_, record] = read_metrics(runs / "my_data")  # epoch 0 (before training), epoch 1
            assert 0 < record["val/mAP"] < 1 and math.isfinite(record["val/mAP_tail"])
            assert "on custom (1142 train, 1500 test images)" in output
        elif script == "test.py":
            report = json.loads((runs / "my_data" / "test_best_valid_mAP.json").read_text())
            assert report["dataset"] == "custom" and list(report["per_class_AP"]) == SYNTHETIC_CLASSES
            assert report["metrics"]["mAP"] == pytest.approx(record["val/mAP"], abs=1e-9)
        else:
            [printed] = output.splitlines()
            image, ranked = printed.split(": ")
            assert image.endswith("images/test/000000.jpg")
            classes = [item.rsplit(" ", 1)[0] for item in ranked.split(", ")]
            assert len(classes) == 5 and set(classes) <= set(SYNTHETIC_CLASSES)  # the top 5


def reject_nan(constant: str):
    raise ValueError(f"not strict JSON: {constant}")


@pytest.mark.filterwarnings("ignore:classes .* have no positive image")
def test_test_py_writes_strict_json_and_charts(scripts, tmp_path):
    # No test image of "tree": its AP is undefined (NaN), which strict JSON writes as null.
    root = write_dataset(tmp_path / "data")
    write_lines(root / "test.txt", split_lines("test", [[label for label in labels if label != 3] or [0]
                                                        for labels in TEST_LABELS]))
    config = write_config(tmp_path / "tiny.py", root, tmp_path / "runs", loss_function=["bal"])
    run_dir = tmp_path / "runs" / "tiny"
    assert scripts["train.py"]([f"--config={config}"]) == 0
    assert scripts["test.py"]([f"--config={config}"]) == 0
    assert scripts["test.py"]([f"--config={config}", "--zeroshot=True"]) == 0

    for name in ("test_best_valid_mAP.json", "test_zeroshot.json"):
        report = json.loads((run_dir / name).read_text(), parse_constant=reject_nan)
        assert list(report["per_class_AP"]) == CLASS_NAMES
        assert report["per_class_AP"]["tree"] is None
        assert all(0 <= report["per_class_AP"][name] <= 1 for name in CLASS_NAMES[:3])
    for name in ("per_class_ap_best_valid_mAP.png", "per_class_ap_zeroshot.png"):
        with Image.open(run_dir / name) as chart:
            assert chart.format == "PNG"
            chart.verify()
