"""Helpers to run a function in several gloo processes (torch.multiprocessing)."""

from __future__ import annotations

import os
import socket
import sys

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


def leave_group() -> None:
    """Leave together, so no rank tears down its gloo group while a peer still talks to it."""
    dist.barrier()
    dist.destroy_process_group()


def spawn(fn, world: int, *args) -> None:
    """Run fn(rank, world, port, *args) in `world` processes and wait for all."""
    mp.spawn(_run_then_exit, args=(fn, world, free_port(), *args), nprocs=world, join=True)


def _run_then_exit(rank: int, fn, world: int, port: int, *args) -> None:
    fn(rank, world, port, *args)
    # Skip the interpreter's teardown once fn has returned: there, rarely (1 exit in about
    # 230 here), a C++ destructor of torch or DeepSpeed aborted a rank ("terminate called
    # without an active exception", no Python frame left) after all its work was written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def single_process_group() -> None:
    """A one-rank gloo group in this process, for collective code under test."""
    if not dist.is_initialized():
        join_group(0, 1, free_port())
