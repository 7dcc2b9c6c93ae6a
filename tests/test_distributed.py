"""Distributed training: 2 CPU processes (gloo) against one process.

The two-process tests spawn the processes once. With the tiny ViT and the same weights
everywhere, each process checks against itself alone: the training step on its
half of a global batch gives the single-process loss and updated weights, and the
sharded evaluation gives exactly the single-process predictions and metrics. The small
collectives (stop agreement, means, rank-0-first preparation) are checked on the way. The
last test runs ``torchrun train.py`` and ``torchrun test.py`` with 2 processes against
``python train.py`` and ``python test.py`` on a small dataset.
"""
import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import clip
from process_group import save_rank_result, set_rendezvous_env, spawn_and_collect
from tailclip import factory
from tailclip.config import Config
from tailclip.data import ensure_synthetic
from tailclip.data.datasets import SYNTHETIC_SEED
from tailclip.engine import distributed, evaluation, stop_signals, training, training_state
from tailclip.engine.logger import read_metrics
from tailclip.engine.optim import build_optimizer, build_scheduler
from tailclip.engine.precision import grad_scaler
from tailclip.model import TailCLIP

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
WORLD = 2
GLOBAL_BATCH = 8
NUM_CLASSES = 5
EVAL_IMAGES = 11  # in batches of 4: [0-3] [4-7] [8-10], to processes 0, 1, 0
GROUPS = {"head": [0, 1], "medium": [2], "tail": [3, 4]}
SOT, EOT = 49406, 49407
# Plain SGD with lr 1: the update is the gradient itself, so a gradient scale error shows
# (an Adam step hardly depends on the gradient's scale).
SGD = Config(model_name="ViT-tiny", pretrained=False, size=64, optimizer="SGD", lr=1.0,
             momentum=0.0, weight_decay=0.0, label_smoothing=0.1)


def _random_tokens(count: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids [count, 77]: start, a few random words, end (the highest id), padding."""
    tokens = torch.zeros(count, 77, dtype=torch.long)
    for row in range(count):
        length = int(torch.randint(3, 12, (1,), generator=generator))
        tokens[row, 0] = SOT
        tokens[row, 1:length - 1] = torch.randint(1, SOT, (length - 2,), generator=generator)
        tokens[row, length - 1] = EOT
    return tokens


def _random_targets(count: int, generator: torch.Generator) -> torch.Tensor:
    targets = (torch.rand(count, NUM_CLASSES, generator=generator) < 0.35).float()
    targets[torch.arange(count), torch.randint(0, NUM_CLASSES, (count,), generator=generator)] = 1
    return targets


def _problem():
    """A tiny TailCLIP (fixed seed) and its objective, a training batch and an evaluation set."""
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(0)
    model = TailCLIP(clip.create_model("ViT-tiny"), _random_tokens(NUM_CLASSES, generator))
    objective = factory.build_objective(SGD, model, class_weights=torch.rand(NUM_CLASSES, generator=generator))
    batch = (torch.randn(GLOBAL_BATCH, 3, 64, 64, generator=generator),
             _random_tokens(GLOBAL_BATCH, generator), _random_targets(GLOBAL_BATCH, generator))
    evaluation = (torch.randn(EVAL_IMAGES, 3, 64, 64, generator=generator),
                  _random_targets(EVAL_IMAGES, generator), _random_tokens(EVAL_IMAGES, generator))
    return model, objective, batch, evaluation


def _train_step(forward, model, objective, images, tokens, targets) -> dict:
    """The training step (`training.train_step`); the outputs and the updated weights."""
    optimizer = build_optimizer(SGD, model.parameters(), CPU)
    trainer = training.Trainer(model, forward, objective, optimizer, build_scheduler(SGD, optimizer),
                               grad_scaler("fp32", CPU), "fp32", CPU, max_nonfinite_steps=0)
    out = training.train_step(trainer, images, targets, tokens, training_state.TrainState(), epoch=0)
    return {"out": {name: value.detach() for name, value in out.items()},
            "weights": {name: p.detach().clone() for name, p in model.named_parameters()}}


def _evaluate(model, objective, images, targets, tokens, order: list[int]) -> evaluation.Evaluation:
    """`evaluation.evaluate_model` of the images ``order`` (all, or a shard) in batches of 4."""
    batches = [(images[i], targets[i], tokens[i], torch.tensor(i))
               for i in (order[start:start + 4] for start in range(0, len(order), 4))]
    return evaluation.evaluate_model(model, objective, batches, tokens, CPU, "fp32", GROUPS)


def _worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    model, objective, (images, tokens, targets), evaluation_set = _problem()
    # The single-process references, computed by this process alone before joining the group.
    single_evaluation = _evaluate(model, objective, *evaluation_set, list(range(EVAL_IMAGES)))
    reference = copy.deepcopy(model)
    single_step = _train_step(reference, reference, objective, images, tokens, targets)

    set_rendezvous_env(rank, WORLD, port)
    info = distributed.init_distributed("cpu")
    try:
        result = {"info": info, "targets": targets, "single": single_step,
                  "single_evaluation": single_evaluation}
        shard = distributed.eval_shard(EVAL_IMAGES, batch_size=4)
        result["shard"] = shard
        result["evaluation"] = _evaluate(model, objective, *evaluation_set, shard)
        # More processes than batches: process 1 scores nothing.
        result["empty"] = _evaluate(model, objective, *evaluation_set, distributed.eval_shard(4, batch_size=4))

        local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        wrapped = distributed.distribute_model(model, info.device)
        result["distributed"] = _train_step(wrapped, model, distributed.global_batch_objective(objective),
                                            images[local], tokens[local], targets[local])

        # Image 9 skipped as unreadable, image 0 scored twice.
        kept = [index for index in shard if index != 9] + [0]
        result["uneven"] = distributed.gather_eval(torch.tensor(kept), torch.tensor(kept) * 10.0)
        stop = stop_signals.StopSignals()  # a signal that reached process 1 only
        stop.signal_number = signal.SIGTERM if rank == 1 else None
        result["stop"] = (stop.agree(), stop.signal_number)
        result["max"] = (distributed.max_over_processes(15 * rank), distributed.max_over_processes(0))
        # Totals 4 and 2 of 1 and 3 items: 6 / 4 (not the mean of 4 / 1 and 2 / 3).
        result["mean"] = distributed.reduce_mean([4.0, 2.0][rank], count=[1, 3][rank])
        marker = os.path.join(folder, "prepared")
        with distributed.main_process_first():
            result["found_prepared"] = os.path.exists(marker)
            if rank == 0:
                open(marker, "w").close()
        save_rank_result(result, folder, rank)
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    return spawn_and_collect(_worker, folder, WORLD)


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_processes_know_their_place(two_processes):
    for rank, result in enumerate(two_processes):
        assert result["info"] == distributed.DistInfo(rank, rank, WORLD, CPU, rank == 0)


def test_step_equals_single_process_step(two_processes):
    initial = {name: p.detach() for name, p in _problem()[0].named_parameters()}
    for result in two_processes:
        single, multi = result["single"], result["distributed"]
        for term in ("loss", "loss_clip", "loss_bal"):
            assert abs(multi["out"][term].item() - single["out"][term].item()) < 1e-5, term
        # The training metrics see the whole global batch, in order.
        assert torch.allclose(multi["out"]["global_logits"], single["out"]["logits"], rtol=0, atol=1e-5)
        assert torch.equal(multi["out"]["global_targets"], result["targets"])
        assert _max_difference(multi["weights"], single["weights"]) < 1e-5
        # The updates (lr x gradient) agree relative to their size too: a factor of 2 from a
        # scaling mistake would be far off even for parameters with small gradients.
        for name, before in initial.items():
            update, expected = before - multi["weights"][name], before - single["weights"][name]
            error = (update - expected).abs().max().item()
            assert error <= 1e-3 * expected.abs().max().item() + 1e-7, name
        assert _max_difference(single["weights"], initial) > 1e-3  # the step did something
    first, second = two_processes
    assert _max_difference(first["distributed"]["weights"], second["distributed"]["weights"]) == 0


def test_distributed_evaluation_equals_single_process(two_processes):
    shards = [result["shard"] for result in two_processes]
    assert shards == [[0, 1, 2, 3, 8, 9, 10], [4, 5, 6, 7]]
    for result in two_processes:
        single, multi = result["single_evaluation"], result["evaluation"]
        assert torch.equal(multi.targets, single.targets)  # in dataset order
        assert torch.allclose(multi.scores, single.scores, rtol=0, atol=1e-6)
        assert multi.metrics == single.metrics
        assert multi.loss == pytest.approx(single.loss, rel=1e-6)  # the same batches


def test_gather_eval_drops_duplicates_and_missing_images(two_processes):
    expected = [i for i in range(EVAL_IMAGES) if i != 9]
    for result in two_processes:
        indices, values = result["uneven"]
        assert indices.tolist() == expected
        assert values.tolist() == [10.0 * i for i in expected]


def test_a_process_without_evaluation_batches(two_processes):
    single = two_processes[0]["single_evaluation"]
    for result in two_processes:
        assert torch.equal(result["empty"].targets, single.targets[:4])
        assert torch.allclose(result["empty"].scores, single.scores[:4], rtol=0, atol=1e-6)


def test_small_collectives(two_processes):
    for result in two_processes:
        assert result["stop"] == (True, signal.SIGTERM)
        assert result["max"] == (15, 0)
        assert result["mean"] == pytest.approx(1.5)
    assert [result["found_prepared"] for result in two_processes] == [False, True]


# ---------------------------------------------------------------------------------------
# One process

def test_single_process_without_torchrun(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed("cpu") == distributed.DistInfo(0, 0, 1, CPU, True)
    assert distributed.rank_and_world() == (0, 1) and distributed.is_main_process()
    model = torch.nn.Linear(2, 2)
    assert distributed.distribute_model(model, CPU) is model
    assert distributed.global_batch_objective(model) is model
    tensor = torch.arange(3.0)
    assert distributed.all_gather_with_grad(tensor) is tensor
    assert distributed.reduce_mean(10.0, count=4) == 2.5
    assert distributed.max_over_processes(2) == 2
    distributed.barrier()
    with distributed.main_process_first():
        pass


def test_gather_eval_in_one_process_sorts_and_drops_duplicates():
    indices = torch.tensor([2, 0, 1, 0])
    scores = torch.tensor([[2.0], [0.0], [1.0], [0.5]])
    order, sorted_scores = distributed.gather_eval(indices, scores)
    assert order.tolist() == [0, 1, 2]
    assert sorted_scores.flatten().tolist() == [0.0, 1.0, 2.0]  # the first of the two 0s


def test_local_batch_size():
    assert distributed.local_batch_size(8, 4) == 2
    with pytest.raises(ValueError, match="batch_size = 8 .* among the 3 processes"):
        distributed.local_batch_size(8, 3)


def test_a_single_gpu_index_is_refused_with_several_processes(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed.resolve_device("cuda", local_rank=1, world_size=2) == torch.device("cuda", 1)
    assert distributed.resolve_device("auto", local_rank=0, world_size=2) == torch.device("cuda", 0)
    assert distributed.resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="names one GPU"):
        distributed.resolve_device("cuda:1", local_rank=0, world_size=2)
    with pytest.raises(RuntimeError, match="LOCAL_RANK 2 but only 2 GPU"):
        distributed.resolve_device("cuda", local_rank=2, world_size=2)


# ---------------------------------------------------------------------------------------
# torchrun + train.py

@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> list[str]:
    """``--set`` options for a small dataset cut from the synthetic one: 48 training images
    (every class among them) and 40 test images."""
    folder = tmp_path_factory.mktemp("small_dataset")
    source = REPO / "datasets" / "synthetic_mlt"
    ensure_synthetic(source, SYNTHETIC_SEED)
    lines = (source / "synthetic_lt_train.txt").read_text().splitlines()
    chosen, covered = [], set()
    for line in lines:  # an image for each class not covered yet
        labels = set(line.split()[1:])
        if not labels <= covered:
            chosen.append(line)
            covered |= labels
    chosen += [line for line in lines if line not in chosen][:48 - len(chosen)]
    (folder / "train.txt").write_text("\n".join(chosen) + "\n")
    test_lines = (source / "synthetic_lt_test.txt").read_text().splitlines()[:40]
    (folder / "test.txt").write_text("\n".join(test_lines) + "\n")
    return ["dataset=custom", f"train_list={folder / 'train.txt'}", f"test_list={folder / 'test.txt'}",
            f"class_names={source / 'synthetic_labels.txt'}", f"image_root={source / 'images'}",
            "epochs=1", "batch_size=16", "eval_batch_size=16", f"run_dir={folder / 'runs'}"]


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _run(launcher, script: str, options: list[str], *arguments: str) -> str:
    """What ``script`` prints, run under torchrun (``TORCHRUN``) or in this process (the
    ``run_script`` fixture: the one-process reference needs no process of its own)."""
    command = [script, f"--config={REPO / 'configs' / 'demo.py'}", *arguments,
               *(f"--set={option}" for option in options)]
    if launcher is TORCHRUN:
        result = subprocess.run([*TORCHRUN, *command], cwd=REPO, capture_output=True, text=True, timeout=150)
    else:
        result = launcher(*command)
    # A long stderr tail: a failing rank's own error comes before torchrun's report of it.
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-15000:]
    return result.stdout


# The 40 test images lack some classes (test.py's subsets), as the one-process reference says.
@pytest.mark.filterwarnings("ignore:classes .* have no positive image")
def test_torchrun_train_and_test_with_two_processes_match_one(small_dataset, run_script):
    runs = Path(small_dataset[-1].split("=", 1)[1])
    two = _run(TORCHRUN, "train.py", small_dataset, "--run-name=two")
    one = _run(run_script, "train.py", small_dataset, "--run-name=one")
    # Rank 0 alone prints, logs and writes checkpoints.
    assert "on 2 processes (cpu)" in two and two.count("epoch 1/1") == 1
    assert "on 2 processes" not in one
    assert sorted(p.name for p in (runs / "two").glob("*.pt")) == sorted(
        ["best_valid_mAP.pt", "best_valid_mAP_tail.pt", "newest_train_checkpoint.pt"])
    assert len(list((runs / "two").glob("events.out.tfevents.*"))) == 1
    (_, record_two), (_, record_one) = read_metrics(runs / "two"), read_metrics(runs / "one")
    assert json.loads((runs / "two" / "config.json").read_text())["batch_size"] == 16
    # The same batches, flips and evaluation batches as one process: equal to float
    # rounding over 3 steps (the first step's agree to 1e-5, test_step_equals_single_process_step).
    for key in ("train/loss", "train/loss_clip", "train/loss_bal", "val/loss"):
        assert record_two[key] == pytest.approx(record_one[key], rel=1e-4), key
    for key in ("train/mAP", "val/mAP", "val/mAP_tail", "val/AUROC"):
        assert record_two[key] == pytest.approx(record_one[key], abs=1e-4), key

    # test.py on the 2-process checkpoint: 2 processes, then 1.
    printed = _run(TORCHRUN, "test.py", small_dataset, "--run-name=two")
    assert printed.count("all images") == 1  # rank 0's table only
    checkpoint = runs / "two" / "best_valid_mAP.pt"
    report_two = json.loads((runs / "two" / "test_best_valid_mAP.json").read_text())
    _run(run_script, "test.py", small_dataset, "--run-name=one", f"--checkpoint={checkpoint}")
    report_one = json.loads((runs / "two" / "test_best_valid_mAP.json").read_text())  # beside the checkpoint
    assert report_two["num_images"] == report_one["num_images"] == 40
    assert report_two["metrics"] == pytest.approx(report_one["metrics"], abs=1e-6, nan_ok=True)
    assert report_two["loss"] == pytest.approx(report_one["loss"], rel=1e-5)
