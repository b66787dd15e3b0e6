"""Preprocessing as Ray tasks: the Mapper of framework/data/parallel.py over a cluster's
CPUs. The driver reads the files and ships records (no node needs the data on its disk);
each chunk of 256 records is one task; results come back in order, so the artifact is
byte for byte the one the local path builds."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import ray
from tqdm import tqdm

from framework.data.parallel import ChunkFn, chunks


@ray.remote
def _run_chunk(fn: ChunkFn, part: list, shared: Any) -> list:
    return fn(part, shared)


class RayMapper:
    def __call__(self, fn: ChunkFn, items: Sequence, shared: Any, desc: str) -> list:
        shared_ref = ray.put(shared)  # once, not once per task
        parts = chunks(items)
        pending = [_run_chunk.remote(fn, part, shared_ref) for part in parts]
        bar = tqdm(total=len(items), desc=f"{desc} (ray)", unit="ex", disable=not items)
        remaining = list(pending)
        while remaining:
            done, remaining = ray.wait(remaining, num_returns=1)
            bar.update(len(parts[pending.index(done[0])]))
        bar.close()
        return [result for part in ray.get(pending) for result in part]


@contextmanager
def ray_mapper(address: str | None, num_cpus: int | None = None) -> Iterator[RayMapper]:
    """A RayMapper on the cluster at `address` (None: RAY_ADDRESS, else a private local Ray
    of `num_cpus` CPUs); a Ray this started is shut down afterwards, so that training
    connects afresh with its own settings."""
    started = not ray.is_initialized()
    if started:
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        local = address == "local"
        ray.init(address=address, num_cpus=num_cpus if local else None, log_to_driver=False)
    try:
        yield RayMapper()
    finally:
        if started:
            ray.shutdown()
