"""Checkpoint integrity: the commit marker of a checkpoint records each of its files with
its size and CRC-32 (`manifest`, when it is saved: each rank checksums the files it wrote,
`writer_rank`); `damage` checks a checkpoint against it before it is used, and
`set_aside_damaged` moves damaged ones out of the way of resume and rotation. A
checkpoint whose marker records no files (written before checksums) is taken as it is."""

from __future__ import annotations

import json
import os
import re
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch.distributed as dist

from framework.run.files import (
    COMMIT_MARKER,
    CONFIG_FILE,
    PROGRESS_FILE,
    RNG_FILE,
    TOKENIZER_DIR,
)

# A damaged checkpoint is renamed to this prefix plus its name, out of committed()'s sight.
DAMAGED_PREFIX = "damaged_"
_CHUNK = 16 << 20
# Files checksummed at once when verifying on one host: 8 streams keep a parallel file
# system's servers busy, and 8 cores reading and checksumming (2-4 GB/s each here,
# benchmarks/results/checkpoint_verify.md) outrun a 100 Gb/s link; the biggest files go
# first, so a checkpoint of many ranks' shards never waits on one big file started last.
_VERIFY_THREADS = 8

# Who writes which file of a checkpoint. DeepSpeed (runtime/engine.py, _get_ckpt_name and
# _get_rank_zero_ckpt_name): ZeRO 1-3 optimizer shards and ZeRO-3 weight shards by the
# data-parallel rank in their name (the global rank: this framework has no tensor or
# pipeline parallelism, hence mp_rank_00); the whole model's states (ZeRO 0-2) by rank 0,
# its data-parallel writer. train/checkpoint.py's save: each rank its RNG state, rank 0 the rest.
_RANK_SHARD = re.compile(r"(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_00_(?:optim|model)_states\.pt")
_RANK_ZERO = re.compile(r"mp_rank_00_model_states\.pt")
_RNG = re.compile(re.escape(RNG_FILE).replace(re.escape("{rank:05d}"), r"(\d+)"))
_RANK_ZERO_OURS = {PROGRESS_FILE, CONFIG_FILE}


def writer_rank(name: str) -> int | None:
    """The rank that wrote the checkpoint file `name` (relative to the checkpoint), from
    its name alone; None for a file of no known writer."""
    for pattern in (_RANK_SHARD, _RNG):
        if match := pattern.fullmatch(name):
            return int(match.group(1))
    if _RANK_ZERO.fullmatch(name) or name in _RANK_ZERO_OURS:
        return 0
    return 0 if name.startswith(f"{TOKENIZER_DIR}/") else None


def shares(names: list[str], world: int) -> list[list[str]]:
    """Which of `world` ranks checksums which of the files `names`: the rank that wrote it
    (`writer_rank`), whose node still holds it in its page cache, so that no rank reads
    another node's file back. Files of no known writer (or of a rank beyond `world`) are
    dealt out in turn from the last rank (rank 0 writes the most). Each file is in exactly
    one share."""
    mine: list[list[str]] = [[] for _ in range(world)]
    unknown = []
    for name in names:
        rank = writer_rank(name)
        if rank is None or rank >= world:
            unknown.append(name)
        else:
            mine[rank].append(name)
    for turn, name in enumerate(unknown):
        mine[world - 1 - turn % world].append(name)
    return mine


def file_digest(file: Path) -> dict:
    """`file`'s size and CRC-32 (zlib's, which runs at memory speed:
    benchmarks/results/checkpoint_verify.md)."""
    crc, size = 0, 0
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return {"size": size, "crc32": f"{crc:08x}"}


def manifest(path: Path) -> dict[str, dict]:
    """Collective: every file of the checkpoint at `path` (written by all ranks) with its
    digest, in name order; each rank reads the files it wrote (`shares`). Complete on
    rank 0."""
    rank, world = dist.get_rank(), dist.get_world_size()
    names = [None]
    if rank == 0:  # one listing, so that every rank shares out the same files
        names = [sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file())]
    dist.broadcast_object_list(names, src=0)
    mine = {name: file_digest(path / name) for name in shares(names[0], world)[rank]}
    gathered = [None] * world
    dist.all_gather_object(gathered, mine)
    return dict(sorted((name, d) for share in gathered for name, d in share.items()))


def damage(path: Path) -> str | None:
    """What is wrong with the committed checkpoint at `path` against the file sizes and
    checksums its commit marker recorded: a missing file, another size or other bytes;
    None if it is intact (or its marker, written before checksums, records none). Sizes
    first, for all files; then the checksums, several files at once (zlib lets go of the
    GIL), biggest first."""
    try:
        files = json.loads((path / COMMIT_MARKER).read_text())["files"]
    except (ValueError, KeyError, TypeError):
        return None
    for name, want in files.items():
        file = path / name
        if not file.is_file():
            return f"{file} is missing"
        if file.stat().st_size != want["size"]:
            return f"{file} is {file.stat().st_size} bytes, written as {want['size']}"
    by_size = sorted(files, key=lambda name: -files[name]["size"])
    pool = ThreadPoolExecutor(max_workers=_VERIFY_THREADS)
    try:
        digests = pool.map(lambda name: file_digest(path / name)["crc32"], by_size)
        for name, crc in zip(by_size, digests, strict=True):
            if crc != files[name]["crc32"]:
                return f"{path / name} does not hold the bytes written (CRC-32 differs)"
    finally:  # a damaged file found: the files not started yet are not read
        pool.shutdown(cancel_futures=True)
    return None


def set_aside_damaged(found: list[Path]) -> None:
    """Rename damaged checkpoints, newest first, until an intact one: resume and rotation
    then see the newest intact checkpoint as the newest. Nothing is deleted."""
    for path in reversed(found):
        problem = damage(path)
        if problem is None:
            return
        aside = path.with_name(DAMAGED_PREFIX + path.name)
        for n in range(1, 1000):  # a step damaged before, set aside already, keeps its name
            if not aside.exists():
                break
            aside = path.with_name(f"{DAMAGED_PREFIX}{path.name}.{n}")
        os.rename(path, aside)
        print(
            f"warning: checkpoint {path} is damaged ({problem}); moved to {aside} and "
            "falling back to the previous committed checkpoint",
            file=sys.stderr,
            flush=True,
        )
