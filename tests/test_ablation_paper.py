"""scripts/ablation_paper.sh: every variant it gives sweep.py trains with the settings of the
authors' runs of that ablation row (the runs read off the record's logged configs by hand), so
that the sweep reproduces the ablation they logged."""
import json
import os
import runpy
import shutil
import stat
import subprocess
import sys

import pytest

from tailclip.config import load_config
from tailclip.tools.authors_record import UNREPRODUCED_LOSSES, load_record, matching_runs
from tailclip.tools.sweep import expand, parse_grid, parse_variant

# Per benchmark, per setting: the authors' runs (folder names without the
# "<benchmark>_vitb16_nocaptions_" prefix; "@<time>" tells apart two curves in one folder).
EXPECTED = {
    "voc_mlt": {
        "clip": {"clip"},
        "bal": {"asl"},
        "bal-lw-ls": {"bal"},
        "bal-sw-lw-ls": {"bal_sw"},
        "clip+bal-sw": {"clip_asl", "clip_asl_2", "clip_asl_sw", "clip_asl_sw_2"},
        "clip+bal-sw-ls": {"clip_bal_sw_ls", "clip_bal_sw_ls_2"},
        "clip+bal-sw-lw-ls": {"clip_bal_sw_lw_ls", "clip_bal_sw_lw_ls_8"},
        "asl": {"asl_2", "asl_3"},
        "clip+asl": {"clip_asl_3"},
        "clip+asl-sw": {"clip_asl_sw_3"},
        "lambda=0.2": {"clip_bal_sw_lw_ls_3"},
        "lambda=0.5": {"clip_bal_sw_lw_ls_2"},
        "lambda=0.75": {"lambda0.75"},
        "lambda=1.0": {"lambda1.0"},
        "lambda=1.25": {"lambda1.25"},
        "lambda=1.5": {"lambda1.5"},
        "lambda=1.75": {"lambda1.75"},
        "lambda=2.0": {"lambda2.0"},
        "lambda=4.0": {"lambda4.0"},
        "lambda=8.0": {"lambda8.0"},
        "s=1.0": {"s1"},
        "s=1.175": {"s1.175"},
        "s=1.525": {"s1.525"},
        "s=1.7": {"s1.70"},
        "s=1.875": {"s1.875"},
        "s=2.0": {"s2.00@1723962464", "s2.00@1723963878"},
    },
    "coco_mlt": {
        "clip": {"clip"},
        "bal": {"asl"},
        "bal-lw-ls": {"bal"},
        "bal-sw-lw-ls": {"bal_sw_lw_ls"},
        "clip+bal-sw": {"clip_asl_sw_2", "clip_asl_sw_3"},
        "clip+bal-sw-ls": {"clip_bal_sw_ls_2"},
        "clip+bal-sw-lw-ls": {"clip_bal_sw_lw_ls_7"},
        "asl": {"asl_mean"},
        "clip+asl": {"clip_asl_3"},
        "clip+asl-sw": {"clip_asl_sw_4"},
        "lambda=0.4": {"lambda0.400"},
        "lambda=0.75": {"lambda0.750"},
        "lambda=1.0": {"lambda1.000"},
        "lambda=1.25": {"lambda1.250"},
        "lambda=1.5": {"lambda1.500"},
        "lambda=1.75": {"lambda1.750"},
        "lambda=4.0": {"lambda4.000"},
        "lambda=6.0": {"clip_bal_sw_lw_ls_11"},
        "lambda=8.0": {"lambda8.000"},
        "lambda=10.0": {"clip_bal_sw_lw_ls_8", "lambda10.000"},
        "lambda=12.0": {"clip_bal_sw_lw_ls_10"},
        "s=1.0": {"s1.00"},
        "s=1.175": {"s1.175"},
        "s=1.35": {"s1.350"},
        "s=1.525": {"s1.525"},
        "s=1.7": {"s1.700"},
        "s=1.875": {"s1.875"},
        "s=2.0": {"s2.000"},
        "clip+bal": {"clip_asl_2"},
        "clip+bal-sw-lambda=0.4-s=1.35": {"clip_asl", "clip_asl_sw"},
        "clip+bal-sw-ls-lambda=0.4-s=1.35": {"clip_bal_sw_ls"},
        "clip+bal-sw-lw-ls-lambda=0.4-s=1.35": {"clip_bal_sw_lw_ls"},
        "lambda=10.0-s=1.7": {"clip_bal_sw_lw_ls_9"},
    },
}


@pytest.fixture(scope="module")
def sweep_invocations(tmp_path_factory, repo_root):
    """The argument lists the script passes to sweep.py (through a stand-in interpreter that
    records them)."""
    folder = tmp_path_factory.mktemp("ablation")
    recorder, calls = folder / "python", folder / "calls.jsonl"
    recorder.write_text(f"#!{sys.executable}\nimport json, sys\n"
                        f"open({str(calls)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    recorder.chmod(recorder.stat().st_mode | stat.S_IEXEC)
    subprocess.run(["bash", "scripts/ablation_paper.sh", "--seeds", "0,1"], cwd=repo_root, check=True,
                   env={**os.environ, "PYTHON": str(recorder)}, timeout=60)
    parse_args = runpy.run_path(str(repo_root / "sweep.py"))["parse_args"]
    return [(argv[0], parse_args(argv[1:])) for argv in map(json.loads, calls.read_text().splitlines())]


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")
def test_every_variant_trains_as_the_authors_runs_of_its_row(repo_root, sweep_invocations):
    record = load_record()
    # Both sweeps' disk estimates first, then the sweeps, with the same arguments.
    assert [(script, args.estimate) for script, args in sweep_invocations] == [("sweep.py", True)] * 2 + [
        ("sweep.py", False)] * 2
    assert [vars(args) | {"estimate": False} for _, args in sweep_invocations[:2]] == [
        vars(args) for _, args in sweep_invocations[2:]]
    found = {}
    for _, args in sweep_invocations[2:]:
        assert args.seeds == "0,1"  # extra options reach sweep.py
        benchmark = args.name.removeprefix("ablation_paper_")
        assert args.config == f"configs/{benchmark}_vitb16.py"
        prefix = f"{benchmark}_vitb16_nocaptions_"
        found[benchmark] = {}
        for setting in expand([parse_grid(text) for text in args.grid], [parse_variant(text) for text in args.variant]):
            config = load_config(repo_root / args.config, [*args.sets, *setting.overrides]).to_dict()
            assert config["model_name"] == "ViT-B/16" and config["dataset"] == benchmark
            found[benchmark][setting.name] = {run.label.removeprefix(prefix) for run in matching_runs(config, record)}
    assert found == EXPECTED


def test_the_ablation_covers_every_loss_lambda_and_power_row_of_the_authors(repo_root):
    """Each ViT-B/16 run of the published learning rate, batch size, captions and asl_eps is
    some setting's, but for the one that trained a loss no option of ours trains."""
    covered = {(benchmark, f"{benchmark}_vitb16_nocaptions_{name}") for benchmark, rows in EXPECTED.items()
               for names in rows.values() for name in names}
    unreproduced = []
    for run in load_record():
        config = run.config
        if config["model_name"] != "ViT-B/16" or config["lr"] != 1e-6 or config["batch_size"] != 8 \
                or config["use_dataset_train_captions"] or config["asl_eps"] != 1e-8:
            continue
        if run.class_loss in UNREPRODUCED_LOSSES:
            unreproduced.append(run.label)
            continue
        assert (config["dataset"], run.label) in covered, run.label
    assert unreproduced == ["coco_mlt_vitb16_nocaptions_asl_2"]  # their plain loss summed over the batch


def test_each_row_trains_the_loss_of_its_runs():
    """A row of the plain loss trains our asl, one of BAL our bal (the runs' time says which)."""
    by_label = {run.label: run for run in load_record()}
    for benchmark, rows in EXPECTED.items():
        for setting, names in rows.items():
            losses = {by_label[f"{benchmark}_vitb16_nocaptions_{name}"].class_loss for name in names}
            assert losses == ({"asl"} if "asl" in setting.split("-")[0].split("+") else
                              {None} if setting == "clip" else {"bal"}), (benchmark, setting)
