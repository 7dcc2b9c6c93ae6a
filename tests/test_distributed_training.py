"""Training under torchrun with unreadable images (``skip_unreadable_images``): 2 CPU
processes (gloo), spawned once, each running `training.train` on the tiny dataset.

Batches of 4 (2 per process) over the 16 training images; in the first epoch's order one
image of step 1 is unreadable (in process 1's slice), both images of process 0's slice of
step 2, and every image of step 3, as is one test image. The processes must neither crash
nor hang, and:

- train as one process does on the same images (flips switched off, since on the JPEG path
  each process draws its own);
- resumed after a stop at the end of the first epoch (after the skipped step, and with
  the processes' random states apart, having flipped different numbers of images), end as
  an unbroken two-process run: the same logged numbers and weights.
"""
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tailclip import distributed, training
from tailclip.checkpoint import load_checkpoint
from tailclip.config import Config
from tailclip.data import BalancedSampler, datasets
from tailclip.logger import read_metrics
from tailclip.model import TailCLIP
from tiny_dataset import TINY_OPTIONS, truncate, write_dataset

WORLD = 2
NEWEST = "newest_train_checkpoint.pt"
TIMEOUT_S = 300  # a hang is a failure, not a stuck test run


def _config(root: Path, runs: Path, epochs: int) -> Config:
    return Config(**{**TINY_OPTIONS, "dataset": "custom", "train_list": str(root / "train.txt"),
                     "test_list": str(root / "test.txt"), "class_names": str(root / "classes.txt"),
                     "image_root": str(root), "run_dir": str(runs), "epochs": epochs,
                     "batch_size": 4, "eval_batch_size": 4, "use_sample_weights": False,
                     "skip_unreadable_images": True})


def _write_data(root: Path) -> Path:
    write_dataset(root)
    order = BalancedSampler(None, 16, seed=0, global_batch_size=4).global_indices().tolist()
    # Step 1: process 1's second image; step 2: process 0's slice; step 3: all four.
    for index in [order[3], *order[4:6], *order[8:12]]:
        truncate(root / f"images/train/{index:02d}.jpg")
    truncate(root / "images/test/03.jpg")
    return root


def _without_flips():
    """Training transforms without the random flip; returns a function that puts it back."""
    build_transform = datasets.build_transform
    datasets.build_transform = lambda size, train, normalize: build_transform(size, False, normalize)
    return lambda: setattr(datasets, "build_transform", build_transform)


def _sigterm_on_forward_call(call_number: int):
    """SIGTERM to this process at the ``call_number``-th training forward pass; returns a
    function that puts the forward pass back."""
    forward, calls = TailCLIP.forward, []

    def forward_then_sigterm(self, *args, **kwargs):
        calls.append(None)
        if len(calls) == call_number:
            os.kill(os.getpid(), signal.SIGTERM)
        return forward(self, *args, **kwargs)

    TailCLIP.forward = forward_then_sigterm
    return lambda: setattr(TailCLIP, "forward", forward)


def _worker(rank: int, port: int, root: str, runs: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    distributed.init_distributed("cpu")
    try:
        one_epoch, two_epochs = (_config(Path(root), Path(runs), epochs) for epochs in (1, 2))
        put_back = _without_flips()
        training.train(one_epoch, "two_processes")
        put_back()

        training.train(two_epochs, "unbroken")
        # Process 1's third forward pass is the last step of epoch 1 (step 3 has none).
        put_back = _sigterm_on_forward_call(3) if rank == 1 else lambda: None
        with pytest.raises(training.TrainingInterrupted):
            training.train(two_epochs, "resumed")
        put_back()
        if rank == 0:  # where the stop was saved, before the resumed run replaces it
            torch.save(load_checkpoint(Path(runs) / "resumed" / NEWEST)["state"],
                       Path(runs) / "stopped_state.pt")
        training.train(two_epochs, "resumed", resume=True)
    finally:
        distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unreadable")
    root, runs = _write_data(folder / "data"), folder / "runs"
    context = mp.spawn(_worker, args=(_free_port(), str(root), str(runs)), nprocs=WORLD, join=False)
    for _ in range(TIMEOUT_S):
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail(f"the {WORLD} training processes hung for {TIMEOUT_S} s")
    put_back = _without_flips()
    try:  # the reference: one process, the same images
        training.train(_config(root, runs, epochs=1), "one_process")
    finally:
        put_back()
    return runs


def test_unreadable_images_train_as_in_one_process(runs):
    (two,), (one,) = read_metrics(runs / "two_processes"), read_metrics(runs / "one_process")
    assert two.keys() == one.keys()
    assert (two["data/unreadable_train_images"], two["data/unreadable_test_images"]) == (7, 1)
    for key, value in one.items():
        if key.startswith(("train/", "val/")):  # None: the mean of no class (no head class)
            assert two[key] == (None if value is None else pytest.approx(value, rel=1e-4, abs=1e-6)), key
    for name in ("two_processes", "one_process"):  # the step without images counts too
        assert load_checkpoint(runs / name / NEWEST)["state"]["global_step"] == 4


def test_a_resumed_run_ends_as_an_unbroken_one(runs):
    def logged(name):
        # The unreadable-image counts aside: a resumed process counts the images it met.
        return [{key: value for key, value in record.items() if not key.startswith(("time/", "data/"))}
                for record in read_metrics(runs / name)]

    assert [record["epoch"] for record in logged("resumed")] == [1, 2]
    assert logged("resumed") == logged("unbroken")
    resumed, unbroken = (load_checkpoint(runs / name / NEWEST) for name in ("resumed", "unbroken"))
    for name, weights in unbroken["model"].items():
        assert torch.equal(resumed["model"][name], weights), name
    # Each process's own random states: process 1 flipped one image more than process 0.
    first, second = unbroken["rng"]
    assert not torch.equal(first["torch"], second["torch"])


def test_the_stop_was_saved_after_the_skipped_step(runs):
    stopped = torch.load(runs / "stopped_state.pt")
    assert (stopped["epoch"], stopped["step_in_epoch"], stopped["global_step"]) == (0, 4, 4)
