"""End to end: train.py on the demo config for 2 epochs (conftest's demo_run), then test.py's
command line on its checkpoint and zero-shot. Both in this process: the process-level
guarantees (a kill, the signals, torchrun) have their own tests."""
import json
import math
import runpy
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tailclip.data.synthetic import CLASS_NAMES
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics

REPO = Path(__file__).resolve().parents[1]
# The scalars every epoch logs (with each loss term and the timings).
EPOCH_TAGS = ["train/loss", "train/loss_clip", "train/loss_bal", "train/mAP", "train/mAP_head",
              "train/mAP_medium", "train/mAP_tail", "train/AUROC", "val/loss", "val/mAP",
              "val/mAP_head", "val/mAP_medium", "val/mAP_tail", "val/AUROC", "lr",
              "time/epoch_s", "time/train_images_per_s", "best/val_mAP", "best/val_mAP_tail"]
# The decisions at top-3, in percent on the charts; none at the threshold 0.5, which clip +
# bal does not train a probability for.
DECISIONS = [f"{name}{group}" for name in ("CP", "CR", "CF1") for group in ("", "_head", "_medium", "_tail")]
DECISIONS += ["OP", "OR", "OF1"]
EPOCH_TAGS += [f"val/{name}_top3" for name in DECISIONS]
CHECKPOINTS = ["best_valid_mAP.pt", "best_valid_mAP_tail.pt", "newest_train_checkpoint.pt"]


@pytest.fixture(scope="module")
def test_py():
    """``test.py``'s ``main(argv) -> exit code`` (a file at the top of the repository)."""
    return runpy.run_path(str(REPO / "test.py"))["main"]


def test_training_writes_checkpoints_metrics_and_tensorboard(demo_run):
    runs, output = demo_run
    run_dir = runs / "demo"
    start, *records = read_metrics(run_dir)
    assert [r["epoch"] for r in (start, *records)] == [0, 1, 2]
    # Epoch 0 is the evaluation before training: every val/* curve starts there.
    assert {key for key in start if key.startswith("val/")} == {tag for tag in EPOCH_TAGS if tag.startswith("val/")}
    assert not any(key.startswith(("train/", "lr", "best/")) for key in start)
    assert all(r["mAP_unit"] == "fraction" and 0 <= r["val/mAP"] <= 1 for r in (start, *records))
    for record in records:
        for tag in EPOCH_TAGS:
            assert math.isfinite(record[tag]), (tag, record)
    # Cosine annealing from lr to 0 over 2 epochs, stepped per epoch: lr, then lr / 2.
    assert [r["lr"] for r in records] == pytest.approx([5e-4, 2.5e-4])
    assert "epoch 0/2 (before training)" in output
    assert "note: no decisions at the threshold 0.5: clip + bal does not train sigmoid(logit)" in output
    assert "val mAP: start " in output and "(after epoch 2)" in output

    events = EventAccumulator(str(run_dir))
    events.Reload()
    assert set(EPOCH_TAGS) <= set(events.Tags()["scalars"])
    for tag in EPOCH_TAGS:  # mAP and AUROC in percent on the charts
        scale = 100 if "mAP" in tag or "AUROC" in tag or tag.startswith(("val/C", "val/O")) else 1
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert logged == [(r["epoch"], pytest.approx(scale * r[tag], rel=1e-6))
                          for r in (start, *records) if tag in r], tag
    assert "config/text_summary" in events.Tags()["tensors"]
    # The per-step curves: every step of the 2 epochs (1,142 images in batches of 128), once.
    steps = EventAccumulator(str(run_dir / "steps"))
    steps.Reload()
    assert set(steps.Tags()["scalars"]) == {"train_step/loss", "train_step/loss_clip", "train_step/loss_bal",
                                            "train_step/lr"}
    assert [e.step for e in steps.Scalars("train_step/loss")] == list(range(1, 2 * 9 + 1))
    assert [e.value for e in steps.Scalars("train_step/lr")] == pytest.approx([5e-4] * 9 + [2.5e-4] * 9)

    config = json.loads((run_dir / "config.json").read_text())
    assert config["epochs"] == 2 and config["batch_size"] == 128

    newest, best, best_tail = (load_checkpoint(run_dir / name) for name in reversed(CHECKPOINTS))
    assert newest["mAP_unit"] == "fraction"
    assert newest["state"]["epoch"] == 2 and newest["state"]["global_step"] == 2 * math.ceil(1142 / 128)
    assert {**newest["config"], "run_id": newest["state"]["run_id"]} == config
    assert newest["state"]["records"] == [start, *records]  # the run's record: metrics.jsonl is its view
    assert newest["class_names"] == CLASS_NAMES
    assert newest["label_prompts"] == ["a photo of a " + name for name in CLASS_NAMES]
    assert newest["backbone"] == "ViT-tiny"
    assert newest["scheduler"]["last_epoch"] == 2 and newest["optimizer"]["state"]
    [process_rng] = newest["rng"]  # the random states of each process, one here
    assert set(process_rng) == {"python", "numpy", "torch", "cuda"}
    # Each best checkpoint is the model of the epoch with the best logged value.
    for checkpoint, key in ((best, "val/mAP"), (best_tail, "val/mAP_tail")):
        best_epoch = max(records, key=lambda r: r[key])["epoch"]
        assert checkpoint["state"]["epoch"] == best_epoch
    assert newest["state"]["best_mAP"] == max(r["val/mAP"] for r in records)


def test_best_checkpoints_hold_no_optimiser_and_are_under_half_the_newest(demo_run):
    runs, _ = demo_run
    newest = runs / "demo" / "newest_train_checkpoint.pt"
    for name in CHECKPOINTS[:2]:
        best = load_checkpoint(runs / "demo" / name)
        assert not {"optimizer", "rng", "scaler", "scheduler"} & set(best)
        assert {"model", "config", "class_names", "label_prompts", "state", "checksum"} <= set(best)
        assert (runs / "demo" / name).stat().st_size < newest.stat().st_size / 2


def test_test_py_on_best_checkpoint_and_zeroshot(demo_run_copy, test_py, capsys):
    runs = demo_run_copy
    run_dir = runs / "demo"
    _, *records = read_metrics(run_dir)  # the trained epochs
    assert test_py(["--config=configs/demo.py", "--checkpoint=best_valid_mAP.pt",
                    "--set", f"run_dir={runs}"]) == 0
    printed = capsys.readouterr().out
    assert "all images" in printed and "PD/ND" in printed
    report = json.loads((run_dir / "test_best_valid_mAP.json").read_text())
    best = max(records, key=lambda r: r["val/mAP"])
    assert report["epoch"] == best["epoch"]
    # test.py re-evaluates the saved weights: the same numbers as the training's evaluation.
    for key in ("mAP", "mAP_head", "mAP_medium", "mAP_tail", "AUROC"):
        assert report["metrics"][key] == pytest.approx(best[f"val/{key}"], abs=1e-9), key
    assert report["loss"] == pytest.approx(best["val/loss"], rel=1e-5)
    assert list(report["per_class_AP"]) == CLASS_NAMES
    subsets = report["subsets"]
    assert subsets["multi_label"]["num_images"] + subsets["single_label"]["num_images"] == 1500
    assert {"PD", "ND", "PD_ND", "PD_ND_head", "PD_ND_medium", "PD_ND_tail"} <= set(report["pd_nd"])
    assert report["mAP_unit"] == "fraction"
    assert (run_dir / "per_class_ap_best_valid_mAP.png").read_bytes().startswith(b"\x89PNG")

    assert test_py(["--config=configs/demo.py", "--zeroshot=True", "--set", f"run_dir={runs}"]) == 0
    zeroshot = json.loads((run_dir / "test_zeroshot.json").read_text())
    assert zeroshot["checkpoint"] == "zeroshot" and zeroshot["epoch"] == 0
    # The untrained random weights rank classes far worse than the trained ones.
    assert zeroshot["metrics"]["mAP"] < report["metrics"]["mAP"] - 0.05
    # They are the weights train.py evaluated before its first epoch (the same seed).
    start = load_checkpoint(run_dir / "newest_train_checkpoint.pt")["state"]["start_mAP"]
    assert zeroshot["metrics"]["mAP"] == pytest.approx(start, abs=1e-9)


def _custom_config(tmp_path: Path, class_names_file: Path) -> Path:
    data = REPO / "datasets" / "synthetic_mlt"
    config = tmp_path / "renamed.py"
    config.write_text(
        "class CFG:\n"
        "    dataset = 'custom'\n"
        f"    train_list = {str(data / 'synthetic_lt_train.txt')!r}\n"
        f"    test_list = {str(data / 'synthetic_lt_test.txt')!r}\n"
        f"    class_names = {str(class_names_file)!r}\n"
        f"    image_root = {str(data / 'images')!r}\n"
        "    model_name = 'ViT-tiny'\n"
        "    pretrained = False\n"
        "    size = 64\n"
        "    device = 'cpu'\n"
        "    image_cache = False\n")
    return config


def test_checkpoint_of_other_classes_is_refused(demo_run, test_py, tmp_path, capsys):
    runs, _ = demo_run
    checkpoint = str(runs / "demo" / "best_valid_mAP.pt")

    def refused(*args: str) -> str:
        assert test_py(list(args)) == 1
        return capsys.readouterr().err

    labels = (REPO / "datasets" / "synthetic_mlt" / "synthetic_labels.txt").read_text().splitlines()
    renamed = tmp_path / "labels.txt"
    renamed.write_text("".join(f"dark {line}\n" for line in labels))
    message = refused(f"--config={_custom_config(tmp_path, renamed)}", f"--checkpoint={checkpoint}",
                      "--set", f"run_dir={tmp_path}")
    assert "was trained on 20 other classes" in message

    not_a_checkpoint = tmp_path / "notes.pt"
    not_a_checkpoint.write_text("hello")
    message = refused("--config=configs/demo.py", f"--checkpoint={not_a_checkpoint}",
                      "--set", f"run_dir={tmp_path}")
    assert "is not a TailCLIP checkpoint" in message

    message = refused("--config=configs/demo.py", "--checkpoint=missing.pt", "--set", f"run_dir={runs}")
    assert "missing.pt" in message and "best_valid_mAP.pt" in message
