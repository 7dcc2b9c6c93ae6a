"""The machine refusing a write anywhere in a command line (here sweep.py and compare.py; the
run folder of train.py and the report of test.py in test_machine_faults.py) is one line
naming the file and the way on, exit 1: the command lines share one error boundary."""
import json
import runpy
from pathlib import Path

import pytest
from test_machine_faults import read_only

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compare_main():
    return runpy.run_path(str(REPO / "compare.py"))["main"]


def test_a_sweep_folder_through_a_file_is_one_line(sweep_main, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    config = tmp_path / "tiny.py"
    config.write_text(f"class CFG:\n    run_dir = {str(tmp_path / 'afile' / 'runs')!r}\n")
    assert sweep_main(["--config", str(config), "--name", "sw", "--grid", "lr=1e-3,2e-3"]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    sweep = tmp_path / "afile" / "runs" / "sw"
    assert line == (f"error: cannot write {sweep / 'sweep.json'}: Not a directory ({sweep}); a part of its path "
                    "is a file, not a folder: use another folder")


def test_a_read_only_run_folder_for_compare_is_one_line(compare_main, tmp_path, monkeypatch, capsys):
    import tailclip.tools.authors_record
    from tailclip.config import Config

    monkeypatch.setattr(tailclip.tools.authors_record, "load_record", lambda: [])  # no authors' run to match

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({**Config().to_dict(), "dataset": "voc_mlt"}))
    (run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "mAP_unit": "fraction", "val/mAP": 0.8,
                                                       "val/mAP_head": 0.8, "val/mAP_medium": 0.8,
                                                       "val/mAP_tail": 0.8}) + "\n")
    read_only(monkeypatch, run_dir)
    assert compare_main([str(run_dir)]) == 1
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line == (f"error: cannot write {run_dir / 'comparison.md'}: Read-only file system; its disk is "
                    "read-only: use a folder on a writable disk")
