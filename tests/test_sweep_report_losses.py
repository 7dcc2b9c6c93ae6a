"""A sweep's report holds each setting against the authors' runs of its loss only (our bal
against their BAL runs, our asl against their averaged plain-loss runs), and names how a
setting computed otherwise than their code."""
import csv

from test_sweep_report import GROUPS, write_run

from tailclip.config import load_config
from tailclip.tools.sweep_report import write_report

# VOC-MLT ViT-B/16 with the contrastive term and the sampler, no class weights or smoothing.
ROWS = {"clip+bal-sw": ["label_smoothing=0.0", "use_weighted_loss=False"],
        "clip+asl-sw": ["loss_function=['clip','asl']"],
        "clip+asl-sw-bf16": ["loss_function=['clip','asl']", "precision='bf16'"]}


def test_each_setting_is_held_against_the_runs_of_its_loss(tmp_path, repo_root):
    folder = tmp_path / "sweep"
    for setting, overrides in ROWS.items():
        config = load_config(repo_root / "configs" / "voc_mlt_vitb16.py", [*overrides, "seed=0"]).to_dict()
        write_run(folder, f"{setting}_seed0", config, [{f"val/{g}": 0.9 for g in GROUPS}] * config["epochs"])
    write_report(folder)
    rows = {row["setting"]: row for row in csv.DictReader(open(folder / "results.csv"))}
    best = {setting: [round(100 * float(rows[setting][f"authors_best_mAP_{end}"]), 2) for end in ("min", "max")]
            for setting in ROWS}
    assert rows["clip+bal-sw"]["authors_runs"] == "4" and best["clip+bal-sw"] == [92.11, 92.34]  # BAL only
    assert rows["clip+asl-sw"]["authors_runs"] == "1" and best["clip+asl-sw"] == [93.05, 93.05]  # the plain loss
    assert best["clip+asl-sw-bf16"] == best["clip+asl-sw"]
    text = (folder / "results.md").read_text()
    assert "Computed otherwise than the authors' code (clip+asl-sw-bf16): trained in bf16, theirs in float32." in text
    assert text.count("Computed otherwise") == 1  # the published config computes in float32
