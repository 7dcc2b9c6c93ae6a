"""The process groups that ``tailclip.engine.distributed`` creates beside the default one: the host
(gloo) group for long waits, made when the processes join, and the group of the autograd
gather, apart from the one whose communicator DistributedDataParallel's gradient reduction
uses. Two CPU processes (gloo)."""
import time

import pytest
import torch
import torch.distributed as dist

from process_group import save_rank_result, set_rendezvous_env, spawn_and_collect
from tailclip.engine import distributed

WORLD = 2


def _worker(rank: int, port: int, folder: str) -> None:
    torch.set_num_threads(1)
    set_rendezvous_env(rank, WORLD, port)
    distributed.init_distributed("cpu")
    result = {}

    def no_group_after_init(*args, **kwargs):
        # A group made later is made by each process when it gets there: the processes that
        # wait for rank 0's download would make it alone, bound by the store's timeout.
        raise AssertionError("a process group was created after init_distributed")

    dist.new_group = no_group_after_init
    try:
        with distributed.main_process_first():  # where rank 0 downloads weights
            result["first"] = time.monotonic()
        result["max"] = distributed.max_over_processes(rank)
        gather_group = distributed.gather_group()
        result["gather_group_is_default"] = gather_group is dist.group.WORLD
        result["gather_group_size"] = dist.get_world_size(gather_group)
        rows = torch.full((2, 3), float(rank + 1), requires_grad=True)
        gathered = distributed.all_gather_with_grad(rows)
        (gathered * torch.arange(4.0)[:, None]).sum().backward()
        result["gathered"], result["grad"] = gathered.tolist(), rows.grad.tolist()
    finally:
        save_rank_result(result, folder, rank)
        distributed.cleanup()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("groups")
    return spawn_and_collect(_worker, folder, WORLD)


def test_every_group_exists_once_the_processes_have_joined(results):
    # Barriers, host exchanges and the gather after init_distributed create no group (the
    # spawn above would have raised).
    assert [result["max"] for result in results] == [1, 1]
    assert results[0]["first"] < results[1]["first"]


def test_autograd_gather_has_its_own_group(results):
    for result in results:
        assert not result["gather_group_is_default"] and result["gather_group_size"] == WORLD


def test_autograd_gather_through_its_group(results):
    for rank, result in enumerate(results):
        assert result["gathered"] == [[1.0] * 3, [1.0] * 3, [2.0] * 3, [2.0] * 3]
        # Each process's rows get the gradient of both processes' losses: 2 x the row's weight.
        assert result["grad"] == [[WORLD * row] * 3 for row in (2 * rank, 2 * rank + 1)]
