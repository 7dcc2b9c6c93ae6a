"""The checkpoint is the run's record: a run has an id, and its checkpoints hold every
epoch's record, so that ``metrics.jsonl`` and ``config.json`` are rewritten from them when
they lose or damage lines (on ``--resume``, a complete run's too, and by a sweep before it
reports), and another run's checkpoint in a run folder is refused. Best checkpoints hold no
optimiser; a run resumes from one, and from a checkpoint written before run records.
Trainings run train.py's main on the tiny dataset, in this process."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

import tailclip.engine.files
from tailclip.engine.checkpoint import VERSION, load_checkpoint, save_atomic, with_checksum
from tailclip.engine.logger import read_metrics
from tailclip.tools.sweep import record_sweep
from tiny_dataset import write_config, write_dataset

NEWEST = "newest_train_checkpoint.pt"


@pytest.fixture(scope="module")
def two_runs(train_main, tmp_path_factory):
    """Two complete two-epoch runs, ``a`` and ``b``: (config file, runs folder)."""
    folder = tmp_path_factory.mktemp("two_runs")
    config = write_config(folder / "tiny.py", write_dataset(folder / "data"), folder / "runs",
                          loss_function=["bal"], epochs=2)
    for name in ("a", "b"):
        assert train_main([f"--config={config}", f"--run-name={name}"]) == 0
    return config, folder / "runs"


@pytest.fixture
def run_a(two_runs, tmp_path):
    """A copy of run ``a``: (train.py arguments that address it, its folder)."""
    config, runs = two_runs
    shutil.copytree(runs / "a", tmp_path / "runs" / "a")
    return [f"--config={config}", "--set", f"run_dir={tmp_path / 'runs'}", "--run-name=a"], tmp_path / "runs" / "a"


def snapshot(folder: Path) -> dict:
    return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def test_another_runs_checkpoint_is_refused_and_the_folder_is_unchanged(train_main, two_runs, run_a, capsys):
    args, run_dir = run_a
    shutil.copy(two_runs[1] / "b" / NEWEST, run_dir / NEWEST)
    before = snapshot(run_dir)
    capsys.readouterr()
    assert train_main([*args, "--resume", "--set", "epochs=3"]) == 1
    ours, theirs = (load_checkpoint(two_runs[1] / name / NEWEST)["state"]["run_id"] for name in ("a", "b"))
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "Traceback" not in message
    assert f"cannot resume {run_dir}: {NEWEST} is run {theirs}'s" in message and f"run {ours}'s" in message
    assert snapshot(run_dir) == before


def lose_last_line(text: str) -> str:
    return "".join(text.splitlines(keepends=True)[:-1])


def delete_middle_line(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:1] + lines[2:])


def damage_middle_line(text: str) -> str:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:1] + [lines[1][:40] + "\n"] + lines[2:])


@pytest.mark.parametrize("damage", [lose_last_line, delete_middle_line, damage_middle_line])
def test_resume_of_a_complete_run_restores_its_metrics_from_the_checkpoint(train_main, run_a, damage, capsys):
    args, run_dir = run_a
    metrics, config = run_dir / "metrics.jsonl", run_dir / "config.json"
    whole, whole_config = metrics.read_text(), config.read_text()
    metrics.write_text(damage(whole))
    config.unlink()
    capsys.readouterr()
    assert train_main([*args, "--resume"]) == 0
    out = capsys.readouterr().out
    assert f"{metrics} lacked or held damaged 1 of the 3 records in the run's checkpoint: rewritten from it" in out
    assert "is complete: 2 of 2 epochs" in out
    assert metrics.read_text() == whole and config.read_text() == whole_config


def test_resume_restores_a_lost_line_and_goes_on(train_main, run_a, capsys):
    args, run_dir = run_a
    metrics = run_dir / "metrics.jsonl"
    whole = metrics.read_text()
    metrics.write_text(delete_middle_line(whole))
    assert train_main([*args, "--resume", "--set", "epochs=3"]) == 0
    assert "lacked or held damaged 1 of the 3 records" in capsys.readouterr().out
    assert metrics.read_text().startswith(whole)
    assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1, 2, 3]
    assert len({record["run_id"] for record in read_metrics(run_dir)}) == 1


def test_a_sweep_restores_lost_and_damaged_lines_before_it_reports(sweep_main, tiny_config, tmp_path, capsys):
    args = ["--config", str(tiny_config), "--name", "sw", "--grid", "lr=1e-3,2e-3"]
    assert sweep_main(args) == 0
    folder = tmp_path / "runs" / "sw"
    lost, damaged = (folder / f"lr={lr}_seed0" / "metrics.jsonl" for lr in ("1e-3", "2e-3"))
    whole = {path: path.read_text() for path in (lost, damaged)}
    lost.write_text(lose_last_line(whole[lost]))  # a crash before the append reached the disk
    damaged.write_text(damage_middle_line(whole[damaged]))
    assert sweep_main(args) == 0
    assert {path: path.read_text() for path in (lost, damaged)} == whole
    rows = (folder / "results.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in rows[1:]] == ["lr=1e-3", "lr=2e-3"]  # neither left out

    lost.write_text(lose_last_line(whole[lost]))
    capsys.readouterr()
    assert sweep_main(["--report", str(folder)]) == 0
    assert f"{lost} lacked or held damaged 1 of the 3 records" in capsys.readouterr().out
    assert lost.read_text() == whole[lost] and "Not finished" not in (folder / "results.md").read_text()


def test_sweep_json_is_written_whole_and_one_cut_short_is_one_line(sweep_main, tiny_config, tmp_path,
                                                                  monkeypatch, capsys):
    folder = tmp_path / "runs" / "sw"
    record_sweep(folder, tiny_config, [], ["lr"], ["lr=1e-3"])
    before = (folder / "sweep.json").read_bytes()

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tailclip.engine.files.os, "fsync", killed)  # during the write, before its rename
    with pytest.raises(KeyboardInterrupt):
        record_sweep(folder, tiny_config, [], ["lr", "epochs"], ["lr=1e-3_epochs=3"])
    monkeypatch.undo()
    assert (folder / "sweep.json").read_bytes() == before and sorted(p.name for p in folder.iterdir()) == ["sweep.json"]

    (folder / "sweep.json").write_bytes(before[:len(before) // 2])  # as an older version's crash left it
    for argv in (["--config", str(tiny_config), "--name", "sw", "--grid", "lr=1e-3"], ["--report", str(folder)]):
        capsys.readouterr()
        assert sweep_main(argv) == 1
        err = capsys.readouterr().err
        assert err == (f"error: {folder / 'sweep.json'} is damaged (not the JSON a sweep writes); delete it and "
                       "run the sweep command again: it is written anew, and the runs are kept\n")


def test_a_run_resumes_from_a_best_checkpoint_and_says_what_it_lacks(train_main, run_a, capsys):
    args, run_dir = run_a
    best = load_checkpoint(run_dir / "best_valid_mAP.pt")
    assert "optimizer" not in best and best["state"]["records"] == read_metrics(run_dir)[:best["state"]["epoch"] + 1]
    (run_dir / NEWEST).unlink()
    (run_dir / "best_valid_mAP_tail.pt").unlink()
    capsys.readouterr()
    assert train_main([*args, "--resume", "--set", "epochs=3"]) == 0
    out = capsys.readouterr().out
    assert (f"resume: the checkpoint holds the weights and progress of epoch {best['state']['epoch']}, not the "
            "optimiser state (AdamW restarts its moments), the random-number states") in out
    assert [record["epoch"] for record in read_metrics(run_dir)] == list(range(4))
    assert load_checkpoint(run_dir / NEWEST)["state"]["epoch"] == 3


def test_a_checkpoint_from_before_run_records_resumes(train_main, run_a, capsys):
    args, run_dir = run_a
    old = load_checkpoint(run_dir / NEWEST)
    state = {key: value for key, value in old["state"].items() if key not in ("run_id", "records")}
    save_atomic(with_checksum({**old, "version": VERSION - 1, "state": state}), run_dir / NEWEST)
    metrics = run_dir / "metrics.jsonl"  # the files of that version had no run id either
    metrics.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "run_id"}) + "\n"
                               for r in read_metrics(run_dir)))
    capsys.readouterr()
    assert train_main([*args, "--resume", "--set", "epochs=3"]) == 0
    out = capsys.readouterr().out
    assert "resume: the checkpoint was written before checkpoints kept the run's records: its metrics.jsonl " \
           "is kept as it is (up to epoch 2), and the run gets the id " in out
    records = read_metrics(run_dir)
    assert [record["epoch"] for record in records] == [0, 1, 2, 3] and "run_id" in records[3]
    assert load_checkpoint(run_dir / NEWEST)["state"]["records"] == records
