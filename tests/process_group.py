"""Helpers for tests of torch.distributed on the CPU: a free port, the rendezvous
environment of one process, and spawning processes that each save ``rank<r>.pt``."""
import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def set_rendezvous_env(rank: int, world: int, port: int) -> None:
    """What torchrun sets for process ``rank`` of ``world`` on this host."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def save_rank_result(result, folder: str, rank: int) -> None:
    torch.save(result, os.path.join(folder, f"rank{rank}.pt"))


def spawn_and_collect(worker, folder: Path, world: int) -> list:
    """Runs ``worker(rank, port, folder)`` in ``world`` processes; each saves its result
    with ``save_rank_result``. Returns the results in rank order."""
    mp.spawn(worker, args=(free_port(), str(folder)), nprocs=world, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=False) for rank in range(world)]
