"""The disk a sweep needs, said before it starts (estimated from the parameter count and
the checkpoints each run saves, checked against the files a run writes), and ``--keep
best``: a finished run keeps what its reports and tests read, not its newest checkpoint."""
from pathlib import Path

import pytest

from tailclip.config import load_config
from tailclip.engine.logger import read_metrics
from tailclip.tools.disk_estimate import checkpoint_sizes, sweep_disk_line

REPO = Path(__file__).resolve().parents[1]


def test_a_sweep_says_its_disk_and_keeps_best_checkpoints_only(sweep_main, tiny_config, tmp_path, capsys,
                                                              train_calls):
    args = ["--config", str(tiny_config), "--name", "sw", "--grid", "lr=1e-3,2e-3", "--keep", "best"]
    assert sweep_main(args) == 0
    out = capsys.readouterr().out
    cfg = load_config(tiny_config, ["lr=1e-3", f"run_dir={tmp_path / 'runs' / 'sw'}"])
    assert out.startswith(sweep_disk_line([cfg, cfg], keep_best=True, at_once=1))
    for run in ("lr=1e-3_seed0", "lr=2e-3_seed0"):
        run_dir = tmp_path / "runs" / "sw" / run
        kept = sorted(path.name for path in run_dir.iterdir() if not path.name.startswith("events."))
        assert kept == ["best_valid_mAP.pt", "best_valid_mAP_tail.pt", "config.json", "metrics.jsonl", "steps"]
        assert [record["epoch"] for record in read_metrics(run_dir)] == [0, 1, 2]
    # The estimate against the files the run wrote (its newest was deleted).
    run_dir = tmp_path / "runs" / "sw" / "lr=1e-3_seed0"
    for name, size in checkpoint_sizes(cfg).items():
        if name != "newest_train_checkpoint.pt":
            assert size == pytest.approx((run_dir / name).stat().st_size, rel=0.01), name
    train_calls.clear()
    assert sweep_main(args) == 0  # finished runs are skipped, not trained again from a best checkpoint
    assert train_calls == []
    assert "| lr=1e-3 |" in (tmp_path / "runs" / "sw" / "results.md").read_text()


def test_the_paper_ablation_estimate_from_parameter_counts():
    vit = load_config(REPO / "configs" / "voc_mlt_vitb16.py")
    # ViT-B/16: 149.6 M weights (OpenAI's model card: 150 M), 4 bytes each; AdamW's two moments.
    sizes = checkpoint_sizes(vit)
    assert sizes["best_valid_mAP.pt"] == 4 * 149_620_737
    assert sizes["newest_train_checkpoint.pt"] == 3 * sizes["best_valid_mAP.pt"]
    assert sweep_disk_line([vit] * 54, keep_best=False, at_once=1).startswith(
        "disk: about 161.6 GB for the checkpoints of 54 runs (a run of ViT-B/16: best_valid_mAP.pt 598 MB, "
        "best_valid_mAP_tail.pt 598 MB, newest_train_checkpoint.pt 1.8 GB); with --keep best, finished runs "
        "delete their newest checkpoint: 66.4 GB")


def test_estimate_says_the_disk_and_writes_nothing(sweep_main, tiny_config, tmp_path, capsys, train_calls):
    assert sweep_main(["--config", str(tiny_config), "--name", "sw", "--grid", "lr=1e-3,2e-3", "--estimate"]) == 0
    assert capsys.readouterr().out.startswith("disk: about 137 MB for the checkpoints of 2 runs (a run of ViT-tiny")
    assert train_calls == [] and not (tmp_path / "runs").exists()
