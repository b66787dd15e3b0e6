"""Map a function over chunks of records, in order, with a progress bar: over local
processes here, or as Ray tasks (framework/cluster/ray_preprocess.py) behind the same
call. The functions are pure, so the result never depends on where they ran."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Protocol

from tqdm import tqdm

CHUNK = 256
# fn(chunk, shared) -> one result per item of the chunk
ChunkFn = Callable[[list, Any], list]


class Mapper(Protocol):
    def __call__(self, fn: ChunkFn, items: Sequence, shared: Any, desc: str) -> list: ...


def chunks(items: Sequence, size: int = CHUNK) -> list[list]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


_shared: dict = {}


def _set_shared(value: Any) -> None:
    _shared["value"] = value


def _call(fn: ChunkFn, chunk: list) -> list:
    return fn(chunk, _shared["value"])


class LocalMapper:
    """`num_proc` processes (one: in this process); `shared` reaches each process once."""

    def __init__(self, num_proc: int):
        self.num_proc = num_proc

    def __call__(self, fn: ChunkFn, items: Sequence, shared: Any, desc: str) -> list:
        parts = chunks(items)
        bar = tqdm(total=len(items), desc=desc, unit="ex", disable=not items)
        results: list = []
        if self.num_proc <= 1 or len(parts) <= 1:
            for part in parts:
                results += fn(part, shared)
                bar.update(len(part))
        else:
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            with ProcessPoolExecutor(
                self.num_proc, initializer=_set_shared, initargs=(shared,)
            ) as pool:
                for part, done in zip(
                    parts, pool.map(_call, [fn] * len(parts), parts), strict=True
                ):
                    results += done
                    bar.update(len(part))
        bar.close()
        return results
