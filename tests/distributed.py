"""Helpers to run a function in several gloo processes (torch.multiprocessing)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join_group(rank: int, world: int, port: int) -> None:
    """Join a gloo group the way a launcher would, environment included (DeepSpeed reads it)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)


def spawn(fn, world: int, *args) -> None:
    """Run fn(rank, world, port, *args) in `world` processes and wait for all."""
    mp.spawn(fn, args=(world, free_port(), *args), nprocs=world, join=True)


def single_process_group() -> None:
    """A one-rank gloo group in this process, for collective code under test."""
    if not dist.is_initialized():
        join_group(0, 1, free_port())
