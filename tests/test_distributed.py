"""Distributed training (issue 7): 2 CPU processes (gloo) against one process.

The two-process test spawns the processes once and checks, on the tiny ViT with the same
weights everywhere: one training step on a global batch split in two gives the
single-process loss, gradients and updated weights; sharded evaluation gathers exactly the
single-process predictions and metrics; and the small collectives (stop flags, means,
rank-0-first preparation) behave.
"""
import copy
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import clip
from tailclip import distributed
from tailclip.config import Config
from tailclip.metrics import evaluate
from tailclip.model import TailCLIP

WORLD = 2
GLOBAL_BATCH = 8
NUM_CLASSES = 5
EVAL_IMAGES = 11  # odd: the second shard is padded with a duplicate of image 0
GROUPS = {"head": [0, 1], "medium": [2], "tail": [3, 4]}
SOT, EOT = 49406, 49407
LR = 1.0  # plain SGD: the update is the gradient itself, so a gradient scale error shows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    """A tiny TailCLIP (fixed seed) and a training batch and evaluation set for it."""
    generator = torch.Generator().manual_seed(1)
    cfg = Config(model_name="ViT-tiny", pretrained=False, size=64, label_smoothing=0.1)
    torch.manual_seed(0)
    model = TailCLIP(clip.create_model("ViT-tiny"), _random_tokens(NUM_CLASSES, generator), cfg,
                     class_weights=torch.rand(NUM_CLASSES, generator=generator))
    batch = (torch.randn(GLOBAL_BATCH, 3, 64, 64, generator=generator),
             _random_tokens(GLOBAL_BATCH, generator), _random_targets(GLOBAL_BATCH, generator))
    evaluation = (torch.randn(EVAL_IMAGES, 3, 64, 64, generator=generator),
                  _random_targets(EVAL_IMAGES, generator))
    return model, batch, evaluation


def _sgd_step(forward, parameters, images, tokens, targets) -> dict:
    """One SGD step; returns the outputs, the gradients and the updated weights."""
    optimizer = torch.optim.SGD(parameters(), lr=LR)
    out = forward(images, tokens, targets)
    out["loss"].backward()
    gradients = {name: p.grad.clone() for name, p in parameters(named=True)}
    optimizer.step()
    return {"out": {k: v.detach() for k, v in out.items()}, "gradients": gradients,
            "weights": {name: p.detach().clone() for name, p in parameters(named=True)}}


def _parameters(model):
    def parameters(named=False):
        return model.named_parameters() if named else model.parameters()
    return parameters


def _scores(model, images) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model.predict_scores(images)


def _worker(rank: int, port: int, folder: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    try:
        model, (images, tokens, targets), (eval_images, eval_targets) = _problem()
        result = {"info": info, "targets": targets}

        # The single-process step on the whole global batch, computed here as the reference.
        reference = copy.deepcopy(model)
        result["single"] = _sgd_step(reference, _parameters(reference), images, tokens, targets)

        # The same step with this process's half of the batch.
        local = slice(rank * GLOBAL_BATCH // WORLD, (rank + 1) * GLOBAL_BATCH // WORLD)
        wrapped = distributed.distribute_model(model, info.device)
        result["distributed"] = _sgd_step(wrapped, _parameters(model), images[local],
                                          tokens[local], targets[local])

        # Evaluation: this process's shard, gathered; and everything in this one process.
        shard = list(distributed.shard_sampler(range(EVAL_IMAGES)))
        result["shard"] = shard
        result["gathered"] = distributed.gather_eval(
            torch.tensor(shard), _scores(model, eval_images[shard]), eval_targets[shard])
        result["single_scores"] = _scores(model, eval_images)
        result["eval_targets"] = eval_targets
        # Shards of different lengths (an image skipped as unreadable in process 1).
        kept = [index for index in shard if index != 9]
        result["uneven"] = distributed.gather_eval(torch.tensor(kept), torch.tensor(kept) * 10.0)

        result["max"] = (distributed.max_over_processes(15 * rank), distributed.max_over_processes(0))
        result["mean"] = distributed.reduce_mean(float(rank + 1), weight=rank + 1)  # (1 + 4) / 3
        marker = os.path.join(folder, "prepared")
        with distributed.main_process_first():
            result["found_prepared"] = os.path.exists(marker)
            if rank == 0:
                open(marker, "w").close()
        torch.save(result, os.path.join(folder, f"rank{rank}.pt"))
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distributed")
    mp.spawn(_worker, args=(_free_port(), str(folder)), nprocs=WORLD, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(WORLD)]


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


def test_processes_know_their_place(two_processes):
    for rank, result in enumerate(two_processes):
        assert result["info"] == distributed.DistInfo(rank, rank, WORLD, torch.device("cpu"), rank == 0)


def test_step_equals_single_process_step(two_processes):
    for result in two_processes:
        single, multi = result["single"], result["distributed"]
        assert abs(multi["out"]["loss"].item() - single["out"]["loss"].item()) < 1e-5
        for term in ("loss_clip", "loss_bal"):
            assert abs(multi["out"][term].item() - single["out"][term].item()) < 1e-5
        # The training metrics see the whole global batch, in order.
        assert torch.allclose(multi["out"]["global_logits"], single["out"]["logits"], atol=1e-5)
        assert torch.equal(multi["out"]["global_targets"], result["targets"])
        # Relative to the gradient's size: a factor of 2 (a scaling mistake) is far off.
        for name, gradient in single["gradients"].items():
            scale = gradient.abs().max().item()
            assert (multi["gradients"][name] - gradient).abs().max().item() <= 1e-4 * scale + 1e-7, name
        assert _max_difference(multi["weights"], single["weights"]) < 1e-5
    first, second = two_processes
    assert _max_difference(first["distributed"]["weights"], second["distributed"]["weights"]) == 0


def test_the_step_changes_the_weights(two_processes):
    """Guards the comparison above against a step that does nothing."""
    model = _problem()[0]
    initial = {name: p.detach() for name, p in model.named_parameters()}
    assert _max_difference(two_processes[0]["single"]["weights"], initial) > 1e-3


def test_distributed_evaluation_equals_single_process(two_processes):
    shards = [result["shard"] for result in two_processes]
    assert shards == [list(range(0, EVAL_IMAGES, 2)), [*range(1, EVAL_IMAGES, 2), 0]]
    for result in two_processes:
        indices, scores, targets = result["gathered"]
        assert indices.tolist() == list(range(EVAL_IMAGES))
        assert torch.equal(targets, result["eval_targets"])
        assert torch.allclose(scores, result["single_scores"], rtol=0, atol=1e-6)
        assert evaluate(scores, targets, GROUPS) == evaluate(result["single_scores"], targets, GROUPS)


def test_gather_eval_accepts_shards_of_different_lengths(two_processes):
    expected = [i for i in range(EVAL_IMAGES) if i != 9]  # process 1's last real image skipped
    for result in two_processes:
        indices, values = result["uneven"]
        assert indices.tolist() == expected
        assert values.tolist() == [10.0 * i for i in expected]


def test_small_collectives(two_processes):
    for result in two_processes:
        assert result["max"] == (15, 0)
        assert result["mean"] == pytest.approx(5 / 3)
    assert [result["found_prepared"] for result in two_processes] == [False, True]


# ---------------------------------------------------------------------------------------
# One process

def test_single_process_without_torchrun(monkeypatch):
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.init_distributed("cpu") == distributed.DistInfo(0, 0, 1, torch.device("cpu"), True)
    assert distributed.rank_and_world() == (0, 1) and distributed.is_main_process()
    model = torch.nn.Linear(2, 2)
    assert distributed.distribute_model(model, torch.device("cpu")) is model
    tensor = torch.arange(3.0)
    assert distributed.all_gather_with_grad(tensor) is tensor
    assert distributed.reduce_mean(2.5, weight=4) == 2.5
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
