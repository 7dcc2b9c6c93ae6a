"""The shell scripts run the project's Python (scripts/choose_python.sh): $PYTHON, else the
checkout's .venv, which the README's set-up creates without activating it, else python3; never
a bare `python` from PATH, which right after the set-up has no torch."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = ["scripts/ablation_paper.sh", "scripts/ablation_demo.sh"]

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")


def recorder(path: Path, name: str) -> Path:
    """An executable that writes its name and arguments to ``calls.txt`` beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho {name} \"$@\" >> {path.parent / 'calls.txt'}\n")
    path.chmod(0o755)
    return path


def run_script(script: str, checkout: Path, path_dir: Path) -> subprocess.CompletedProcess:
    """``script`` run from a copy of the scripts in ``checkout``, from another folder, with
    PATH holding ``path_dir`` (a `python` that lacks torch, maybe a python3) and bash's tools."""
    shutil.copytree(REPO / "scripts", checkout / "scripts")
    recorder(path_dir / "python", "path-python")
    env = {key: value for key, value in os.environ.items() if key != "PYTHON"}
    env["PATH"] = f"{path_dir}:{Path(shutil.which('dirname')).parent}"
    return subprocess.run(["bash", str(checkout / script), "voc_mlt"], cwd=path_dir, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_run_the_checkouts_venv_not_python_from_path(tmp_path, script):
    checkout, path_dir = tmp_path / "checkout", tmp_path / "bin"
    venv_python = recorder(checkout / ".venv" / "bin" / "python", "venv-python")
    result = run_script(script, checkout, path_dir)
    assert result.returncode == 0, result.stderr
    calls = (venv_python.parent / "calls.txt").read_text().splitlines()
    assert calls and all(call.startswith("venv-python sweep.py --config configs/") for call in calls)
    assert not (path_dir / "calls.txt").exists()


@pytest.mark.parametrize("script", SCRIPTS)
def test_without_a_venv_scripts_run_python3(tmp_path, script):
    checkout, path_dir = tmp_path / "checkout", tmp_path / "bin"
    recorder(path_dir / "python3", "python3")
    result = run_script(script, checkout, path_dir)
    assert result.returncode == 0, result.stderr
    calls = (path_dir / "calls.txt").read_text().splitlines()
    assert calls and all(call.startswith("python3 sweep.py --config configs/") for call in calls)
