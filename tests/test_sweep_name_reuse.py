"""A sweep name holds one config and one set of --set values: reusing it for another is refused
in one line before any run trains (its runs of the same setting names would be skipped or
resumed as the new sweep's, its rows reported in one table with them); the same sweep, or more
values and keys for it, goes on."""
import json
import shutil

import pytest

from tailclip.tools.sweep import SWEEP_FILE, SweepError, record_sweep


@pytest.fixture
def recorded(tiny_config, tmp_path):
    """A sweep "sw" of the tiny config at epochs=1, as sweep.py records it before training."""
    folder = tmp_path / "runs" / "sw"
    record_sweep(folder, tiny_config, ["epochs=1"], ["lr"], ["lr=1e-3"])
    return folder


@pytest.mark.parametrize("other", ["sets", "config"])
def test_another_config_or_other_sets_under_a_used_name_are_refused(sweep_main, tiny_config, tmp_path, recorded,
                                                                   train_calls, capsys, other):
    config, sets = tiny_config, ["--set", "epochs=1"]
    if other == "config":
        config = shutil.copy(tiny_config, tmp_path / "other.py")
    else:  # what the runs learn differs (more epochs alone would extend this sweep's runs)
        sets += ["--set", "asl_mul=2"]
    before = (recorded / SWEEP_FILE).read_bytes()
    assert sweep_main(["--config", str(config), "--name", "sw", "--grid", "lr=1e-3", *sets]) == 1
    error = capsys.readouterr().err.strip()
    assert error == (f"error: {recorded / SWEEP_FILE} holds the sweep 'sw' of --config {tiny_config} --set epochs=1, "
                     f"not --config {config} {' '.join(sets)}: give this one another --name")
    assert train_calls == [] and (recorded / SWEEP_FILE).read_bytes() == before


def test_more_epochs_extend_the_same_sweep(tiny_config, recorded):
    record_sweep(recorded, tiny_config, ["epochs=3"], ["lr"], ["lr=1e-3"])
    with pytest.raises(SweepError, match="give this one another --name"):
        record_sweep(recorded, tiny_config, ["epochs=3", "asl_mul=2"], ["lr"], ["lr=1e-3"])


def test_the_same_sweep_with_more_values_and_keys_goes_on(tiny_config, recorded):
    record_sweep(recorded, tiny_config, ["epochs=1"], ["lr", "asl_mul"], ["lr=1e-3", "lr=2e-3_asl_mul=2"])
    sweep = json.loads((recorded / SWEEP_FILE).read_text())
    assert sweep["swept"] == ["lr", "asl_mul"] and sweep["settings"] == ["lr=1e-3", "lr=2e-3_asl_mul=2"]
    assert sweep["sets"] == ["epochs=1"]


def test_a_sweep_recorded_before_its_sets_were_kept_is_compared_by_its_config(tiny_config, tmp_path, recorded):
    path = recorded / SWEEP_FILE
    path.write_text(json.dumps({key: value for key, value in json.loads(path.read_text()).items() if key != "sets"}))
    record_sweep(recorded, tiny_config, ["epochs=3"], ["lr"], ["lr=1e-3"])  # sets unknown: not compared
    with pytest.raises(SweepError, match="give this one another --name"):
        record_sweep(recorded, shutil.copy(tiny_config, tmp_path / "other.py"), [], ["lr"], ["lr=1e-3"])
