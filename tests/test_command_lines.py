"""What the command lines show and write: --help without loading the library, progress bars
only on a terminal, the evaluation before training as epoch 0, fractions in the files and
percent on the charts, test.py's report per checkpoint and its zero-shot warning.

One tiny training run (tests/tiny_dataset.py) is shared by the tests; its output is captured
as a log file would be, not a terminal."""
import contextlib
import io
import json
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tailclip.config import Config
from tailclip.engine.logger import read_metrics
from tailclip.engine.progress import PROGRESS_ENV, show_progress
from tailclip.engine.run_folder import BEST_MAP_CHECKPOINT
from tailclip.errors import TailCLIPError
from tailclip.tools.report import zeroshot_warning
from tiny_dataset import write_config, write_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ("train.py", "test.py", "predict.py")
# The tiny test split has no single-label image of some classes (test.py's subsets).
pytestmark = pytest.mark.filterwarnings("ignore:classes .* have no positive image")
HEAVY_MODULES = ("torch", "numpy", "PIL", "matplotlib", "tensorboard")


def script_main(name: str):
    return runpy.run_path(str(REPO / name))["main"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """(config, run folder, stdout, stderr) of a 2-epoch run whose output goes to files."""
    folder = tmp_path_factory.mktemp("tiny")
    config = write_config(folder / "tiny.py", write_dataset(folder / "data"), folder / "runs", epochs=2)
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert script_main("train.py")([f"--config={config}"]) == 0
    return config, folder / "runs" / "tiny", stdout.getvalue(), stderr.getvalue()


def test_help_loads_neither_torch_nor_the_library():
    # One fresh interpreter for the four command lines, each script's --help in turn: a
    # heavy module loaded by one shows after the later ones too, so the first named is at fault.
    scripts, heavy = (*SCRIPTS, "compare.py"), (*HEAVY_MODULES, "tailclip.tools.authors_record")
    code = ("import runpy, sys\n"
            f"for script in {scripts!r}:\n"
            "    sys.argv = [script, '--help']\n"
            "    try:\n        runpy.run_path(script, run_name='__main__')\n    except SystemExit:\n        pass\n"
            f"    print(script, 'loaded:', sorted(m for m in {heavy!r} if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.count("usage:") == len(scripts) and "--tensorboard" in result.stdout  # compare.py's
    assert [line for line in result.stdout.splitlines() if " loaded: " in line] == [
        f"{script} loaded: []" for script in scripts]


def test_test_py_help_names_the_default_checkpoint(capsys):
    with pytest.raises(SystemExit):
        script_main("test.py")(["--help"])
    assert f"(default: {BEST_MAP_CHECKPOINT})" in " ".join(capsys.readouterr().out.split())


def test_progress_follows_the_terminal_unless_forced(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not show_progress()
    monkeypatch.setattr(sys, "stderr", Terminal())
    assert show_progress()
    monkeypatch.setenv(PROGRESS_ENV, "0")
    assert not show_progress()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setenv(PROGRESS_ENV, "1")
    assert show_progress()
    monkeypatch.setenv(PROGRESS_ENV, "yes")
    with pytest.raises(TailCLIPError, match=f"\\${PROGRESS_ENV} must be 1 .* or 0 .*, got 'yes'"):
        show_progress()


def test_output_to_a_file_has_epoch_lines_and_no_progress_bars(tiny_run):
    _, _, stdout, stderr = tiny_run
    assert stderr == ""  # neither the image-cache bar nor the epoch bars
    assert [line.split("  ")[0] for line in stdout.splitlines() if line.startswith("epoch ")] == [
        "epoch 0/2 (before training)", "epoch 1/2", "epoch 2/2"]


def test_progress_bars_when_forced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(PROGRESS_ENV, "1")
    config = write_config(tmp_path / "tiny.py", write_dataset(tmp_path / "data"), tmp_path / "runs")
    assert script_main("train.py")([f"--config={config}"]) == 0
    stderr = capsys.readouterr().err
    assert "caching train images at 64px" in stderr and "epoch 1/1:" in stderr


def scalars(run_dir: Path, tag: str) -> list[tuple[int, float]]:
    events = EventAccumulator(str(run_dir))
    events.Reload()
    return [(event.step, event.value) for event in events.Scalars(tag)]


def test_evaluation_before_training_is_epoch_0_and_files_hold_fractions(tiny_run):
    _, run_dir, _, _ = tiny_run
    records = read_metrics(run_dir)
    assert [record["epoch"] for record in records] == [0, 1, 2]
    start, first, _ = records
    val_keys = sorted(key for key in first if key.startswith("val/"))
    assert sorted(key for key in start if key not in ("mAP_unit", "epoch", "run_id")) == val_keys
    assert all(record["mAP_unit"] == "fraction" for record in records)
    for key in ("val/mAP", "val/mAP_tail", "val/AUROC"):
        assert 0 <= start[key] <= 1
        # TensorBoard shows the same values in percent, from epoch 0 on.
        assert scalars(run_dir, key) == [(r["epoch"], pytest.approx(100 * r[key], rel=1e-6)) for r in records]
    assert scalars(run_dir, "val/loss") == [(r["epoch"], pytest.approx(r["val/loss"], rel=1e-6)) for r in records]
    assert scalars(run_dir, "train/loss")[0][0] == 1  # nothing trained at epoch 0
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    assert [event.step for event in events.Images("val/per_class_ap")] == [0, 1, 2]


def test_test_py_writes_one_report_and_chart_per_checkpoint(tiny_run, capsys):
    config, run_dir, _, _ = tiny_run
    test_main = script_main("test.py")
    for name in ("best_valid_mAP.pt", "best_valid_mAP_tail.pt"):
        assert test_main([f"--config={config}", f"--checkpoint={name}"]) == 0
    assert "(percent)" in capsys.readouterr().out
    for stem in ("best_valid_mAP", "best_valid_mAP_tail"):
        assert (run_dir / f"per_class_ap_{stem}.png").read_bytes().startswith(b"\x89PNG")
        report = json.loads((run_dir / f"test_{stem}.json").read_text())
        assert report["mAP_unit"] == "fraction" and 0 <= report["metrics"]["mAP"] <= 1
        assert "warning" not in report
    assert not (run_dir / "per_class_ap.png").exists()


def test_bare_zeroshot_flag_warns_about_random_weights(tiny_run, capsys):
    config, run_dir, _, _ = tiny_run
    assert script_main("test.py")([f"--config={config}", "--zeroshot"]) == 0
    printed = capsys.readouterr().out
    expected = "pretrained = False: the zero-shot model is ViT-tiny with random weights"
    assert printed.startswith(f"warning: {expected}")
    report = json.loads((run_dir / "test_zeroshot.json").read_text())
    assert report["checkpoint"] == "zeroshot" and report["warning"].startswith(expected)
    assert (run_dir / "per_class_ap_zeroshot.png").is_file()
    assert zeroshot_warning(Config(pretrained=True)) is None


def test_zeroshot_false_and_checkpoint_together(tiny_run, capsys):
    config, _, _, _ = tiny_run
    assert script_main("test.py")([f"--config={config}", "--zeroshot=False",
                                   "--checkpoint=best_valid_mAP.pt"]) == 0
    with pytest.raises(SystemExit):
        script_main("test.py")([f"--config={config}", "--zeroshot", "--checkpoint=best_valid_mAP.pt"])
    assert "give either --checkpoint or --zeroshot, not both" in capsys.readouterr().err


def _documented_tags(repo_root: Path) -> list[str]:
    """The tags in the first column of docs/outputs.md's TensorBoard table."""
    text = (repo_root / "docs" / "outputs.md").read_text()
    section = text[text.index("## Reading TensorBoard"):]
    section = section[:section.index("\n## ", 1)] if "\n## " in section[1:] else section
    cells = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [tag for cell in cells for tag in re.findall(r"`([^`]+)`", cell)]


def test_docs_tensorboard_table_lists_every_scalar_written(tiny_run, repo_root):
    _, run_dir, _, _ = tiny_run
    events = EventAccumulator(str(run_dir))
    events.Reload()
    written = set(events.Tags()["scalars"])
    patterns = [re.sub(r"<[a-z]+>", "[A-Za-z0-9_]+", re.escape(tag).replace(r"\<", "<").replace(r"\>", ">"))
                for tag in _documented_tags(repo_root)]
    assert {"train/loss", "val/mAP", "best/val_mAP", "time/epoch_s", "hparam/best_val_mAP"} <= written
    assert [tag for tag in sorted(written) if not any(re.fullmatch(p, tag) for p in patterns)] == []
