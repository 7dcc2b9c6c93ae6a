"""Training under torchrun with unreadable images (``skip_unreadable_images``): 2 CPU
processes (gloo), spawned once, each running `training.train` on the tiny dataset.

Batches of 4 (2 per process) over the 16 training images; in the first epoch's order one
image of step 1 is unreadable (in process 1's slice), both images of process 0's slice of
step 2, and every image of step 3, as is one test image. The processes must neither crash
nor hang, and:

- train as one process does on the same images (flips switched off, since on the JPEG path
  each process draws its own);
- refuse, in every process, to train again into the first run's folder;
- resumed after a stop at the end of the first epoch (after the skipped step, and with
  the processes' random states apart, having flipped different numbers of images), end as
  an unbroken two-process run: the same logged numbers and weights.
"""
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from interrupt import ctrl_c_on_forward_call
from process_group import free_port, set_rendezvous_env
from tailclip.config import Config
from tailclip.data import BalancedSampler, datasets
from tailclip.engine import distributed, training
from tailclip.engine.checkpoint import load_checkpoint
from tailclip.engine.logger import read_metrics
from tailclip.engine.run_lock import RunFolderError
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


def _without_flips(patches: pytest.MonkeyPatch) -> None:
    """Training transforms without the random flip."""
    build_transform = datasets.build_transform
    patches.setattr(datasets, "build_transform",
                    lambda size, train, normalize: build_transform(size, False, normalize))


def _worker(rank: int, port: int, root: str, runs: str) -> None:
    torch.set_num_threads(1)
    set_rendezvous_env(rank, WORLD, port)
    distributed.init_distributed("cpu")
    try:
        one_epoch, two_epochs = (_config(Path(root), Path(runs), epochs) for epochs in (1, 2))
        with pytest.MonkeyPatch.context() as patches:
            _without_flips(patches)
            training.train(one_epoch, "two_processes")
        # Again into the same folder: rank 0 refuses, and every process stops with its error.
        with pytest.raises(RunFolderError, match="holds an earlier run"):
            training.train(one_epoch, "two_processes")

        training.train(two_epochs, "unbroken")
        # Ctrl-C in process 1 alone, in its third forward pass: the last step of epoch 1
        # (step 3 has none).
        with pytest.MonkeyPatch.context() as patches, pytest.raises(training.TrainingInterrupted):
            if rank == 1:
                ctrl_c_on_forward_call(patches, 3)
            training.train(two_epochs, "resumed")
        if rank == 0:  # where the stop was saved, before the resumed run replaces it
            torch.save(load_checkpoint(Path(runs) / "resumed" / NEWEST)["state"],
                       Path(runs) / "stopped_state.pt")
        training.train(two_epochs, "resumed", resume=True)
    finally:
        distributed.cleanup()


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("unreadable")
    root, runs = _write_data(folder / "data"), folder / "runs"
    context = mp.spawn(_worker, args=(free_port(), str(root), str(runs)), nprocs=WORLD, join=False)
    for _ in range(TIMEOUT_S):
        if context.join(timeout=1):
            break
    else:
        for process in context.processes:
            process.kill()
        pytest.fail(f"the {WORLD} training processes hung for {TIMEOUT_S} s")
    with pytest.MonkeyPatch.context() as patches:  # the reference: one process, the same images
        _without_flips(patches)
        training.train(_config(root, runs, epochs=1), "one_process")
    return runs


def test_unreadable_images_train_as_in_one_process(runs):
    (_, two), (_, one) = read_metrics(runs / "two_processes"), read_metrics(runs / "one_process")
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
        return [{key: value for key, value in record.items() if not key.startswith(("time/", "data/", "run_id"))}
                for record in read_metrics(runs / name)]

    assert [record["epoch"] for record in logged("resumed")] == [0, 1, 2]
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
