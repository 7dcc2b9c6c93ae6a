"""Relative paths in a config (run_dir, data_root, a custom dataset's files) are relative to
the repository, from whatever folder a command runs: a run and its data never split between
the current folder and the checkout."""
import runpy
from pathlib import Path

import pytest

from tailclip import config as config_module
from tailclip.config import Config, resolve_path
from tailclip.tools.sweep import sweep_folder
from tiny_dataset import write_config, write_dataset


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A stand-in repository root holding the tiny dataset, with the commands run from
    another folder."""
    root = tmp_path / "checkout"
    write_dataset(root / "data")
    monkeypatch.setattr(config_module, "REPO_ROOT", root)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return root


def test_training_and_testing_from_another_folder_use_the_repositorys_runs(checkout, repo_root):
    config = write_config(checkout / "tiny.py", Path("data"), Path("runs"))  # the dataset's files too
    train = runpy.run_path(str(repo_root / "train.py"))["main"]
    assert train([f"--config={config}"]) == 0
    assert (checkout / "runs" / "tiny" / "best_valid_mAP.pt").is_file()
    assert not (checkout.parent / "elsewhere" / "runs").exists()
    test = runpy.run_path(str(repo_root / "test.py"))["main"]
    assert test([f"--config={config}"]) == 0
    assert (checkout / "runs" / "tiny" / "test_best_valid_mAP.json").is_file()


def test_sweeps_and_paths_follow_the_same_rule(checkout, tmp_path):
    config = write_config(checkout / "tiny.py", Path("data"), Path("runs"))
    assert sweep_folder(config, [], "lr") == checkout / "runs" / "lr"
    assert sweep_folder(config, [f"run_dir={tmp_path}/abs"], "lr") == tmp_path / "abs" / "lr"
    assert resolve_path(Config().data_root) == checkout / "datasets"
