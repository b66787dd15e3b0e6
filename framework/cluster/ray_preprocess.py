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

from framework.data.parallel import ChunkFn, Mapper, chunks

# Under data.preprocess=auto, a call with fewer items than this runs in local processes:
# Ray's connection and its workers' first imports cost seconds (3.5 s of a 2-step run on
# the tests' cluster) that a few thousand records, rendered at 2,000-3,000 a second a core,
# never earn back.
AUTO_MIN_ITEMS = 10_000


@ray.remote
def _run_chunk(fn: ChunkFn, part: list, shared: Any) -> list:
    return fn(part, shared)


class RayMapper:
    """Ray tasks on the cluster at `address` (None: RAY_ADDRESS, else a private local Ray
    of `num_cpus` CPUs). With `small` (data.preprocess=auto), calls of fewer than
    AUTO_MIN_ITEMS items go to it, and Ray is joined at the first call that needs it."""

    def __init__(self, address: str | None, num_cpus: int | None, small: Mapper | None):
        self.address, self.num_cpus, self.small = address, num_cpus, small
        self.started = False

    def __call__(self, fn: ChunkFn, items: Sequence, shared: Any, desc: str) -> list:
        if self.small is not None and len(items) < AUTO_MIN_ITEMS:
            return self.small(fn, items, shared, desc)
        self.connect()
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

    def connect(self) -> None:
        if ray.is_initialized():
            return
        address = self.address or os.environ.get("RAY_ADDRESS") or "local"
        local = address == "local"
        ray.init(address=address, num_cpus=self.num_cpus if local else None, log_to_driver=False)
        self.started = True


@contextmanager
def ray_mapper(
    address: str | None, num_cpus: int | None = None, small: Mapper | None = None
) -> Iterator[RayMapper]:
    """A RayMapper, connected now unless it may not need Ray (`small`); a Ray it started
    is shut down afterwards, so that training connects afresh with its own settings."""
    mapper = RayMapper(address, num_cpus, small)
    if small is None:
        mapper.connect()
    try:
        yield mapper
    finally:
        if mapper.started:
            ray.shutdown()
