"""What a new user's first mistakes get: one line that says what to change, and the runs and
files they meant found as they would expect."""
import json
import runpy

import pytest

from tailclip.config import ConfigError, load_config
from tiny_dataset import write_config, write_dataset


@pytest.fixture(scope="module")
def main(repo_root):
    """``main(argv)`` of each command line, run in this process."""
    return {name: runpy.run_path(str(repo_root / f"{name}.py"))["main"]
            for name in ("train", "test", "sweep", "predict")}


def test_a_missing_checkpoint_is_said_before_missing_images(main, tmp_path, capsys):
    # datasets/voc_mlt holds the split files only, as after a fresh clone: 4,952 test images missing.
    argv = ["--config=configs/voc_mlt_vitb16.py", "--checkpoint=best_valid_mAP.pt", f"--set=run_dir={tmp_path}"]
    assert main["test"](argv) == 1
    err = capsys.readouterr().err
    assert err == (f"error: checkpoint 'best_valid_mAP.pt' is neither a file nor in {tmp_path}/voc_mlt_vitb16/ "
                   "(checkpoints there: none)\n")


def test_a_runs_config_json_is_a_config_and_names_its_run(main, tmp_path, capsys):
    """Resumed and tested through the run's own config.json; the resume line says where it goes on."""
    config = write_config(tmp_path / "tiny.py", write_dataset(tmp_path / "data"), tmp_path / "runs")
    assert main["train"]([f"--config={config}"]) == 0
    run = tmp_path / "runs" / "tiny"
    assert load_config(run / "config.json") == load_config(config)
    capsys.readouterr()
    assert main["train"]([f"--config={run / 'config.json'}", "--resume", "--set", "epochs=2"]) == 0
    assert f"resuming {run} after epoch 1, at the start of epoch 2\n" in capsys.readouterr().out
    assert main["test"]([f"--config={run / 'config.json'}"]) == 0
    assert (run / "test_best_valid_mAP.json").is_file()


@pytest.mark.parametrize("text, problem", [
    ("null", "holds one JSON object of options, not a NoneType"),
    ("{\"lr\": 1e-3,}", "not a run's config.json (Expecting property name"),
    ("{\"lr\": 0.001, \"epoch\": 2}", "epoch: unknown option; did you mean 'epochs'?"),
])
def test_a_json_config_that_is_no_runs_config_is_one_line(tmp_path, text, problem):
    path = tmp_path / "config.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert str(error.value).startswith(f"{path}") and problem in str(error.value)
    assert "\n" not in str(error.value) and "NameError" not in str(error.value)


@pytest.mark.parametrize("option", ["run_dir", "data_root"])
def test_an_empty_path_is_refused(main, option, capsys):
    assert main["train"](["--config=configs/demo.py", "--set", f"{option}="]) == 1
    assert capsys.readouterr().err == f"error: --set {option}=: {option}: must be a path, not empty, got ''\n"


def test_a_search_without_ranges_says_what_it_needs(main, capsys):
    assert main["sweep"](["--config=configs/demo.py", "--name=s", "--search", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: --search needs what to search: --range KEY=LOW:HIGH[:log]")
    assert "--variant" not in err


@pytest.mark.parametrize("command, argv, suggestion", [
    ("train", ["--config=configs/demo.py", "--epoch=2"], "did you mean --set epochs=2?"),
    ("train", ["--config=configs/demo.py", "--batch-size", "4"], "did you mean --set batch_size=4?"),
    ("train", ["--config=configs/demo.py", "--run_name=x"], "did you mean --run-name?"),
    ("test", ["--config=configs/demo.py", "--chekpoint=a.pt"], "did you mean --checkpoint?"),
    ("sweep", ["--config=configs/demo.py", "--sed=0,1"], "did you mean --seeds?"),  # not --set seed
    ("predict", ["--checkpoint=a.pt", "x.jpg", "--treshold=0.5"], "did you mean --threshold?"),
])
def test_a_misspelt_flag_gets_a_suggestion(main, capsys, command, argv, suggestion):
    with pytest.raises(SystemExit) as exit_:
        main[command](argv)
    assert exit_.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert ": error: unrecognized arguments: " in last_line and last_line.endswith(suggestion)


def test_an_unknown_flag_close_to_nothing_gets_no_guess(main, capsys):
    with pytest.raises(SystemExit):
        main["train"](["--config=configs/demo.py", "--xyzzy"])
    assert capsys.readouterr().err.splitlines()[-1].endswith(": error: unrecognized arguments: --xyzzy")


def test_run_config_json_keys_are_the_options(tmp_path):
    """A config.json is what train.py writes: every option by name, nothing else."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps(load_config("configs/demo.py").to_dict()))
    assert load_config(path, ["epochs=3"]).epochs == 3
