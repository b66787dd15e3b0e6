"""Checkpoint integrity: the commit marker of a checkpoint records each of its files with
its size and CRC-32 (`manifest`, when it is saved); `damage` checks a checkpoint against
it before it is used, and `set_aside_damaged` moves damaged ones out of the way of resume
and rotation. A checkpoint whose marker records no files (written before checksums) is
taken as it is."""

from __future__ import annotations

import json
import os
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch.distributed as dist

from framework.run_dir import COMMIT_MARKER

# A damaged checkpoint is renamed to this prefix plus its name, out of committed()'s sight.
DAMAGED_PREFIX = "damaged_"
_CHUNK = 16 << 20
# Files checksummed at once when verifying: enough to keep a parallel file system busy.
_VERIFY_THREADS = 8


def file_digest(file: Path) -> dict:
    """`file`'s size and CRC-32 (zlib's, which runs at memory speed, see the README)."""
    crc, size = 0, 0
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            crc, size = zlib.crc32(chunk, crc), size + len(chunk)
    return {"size": size, "crc32": f"{crc:08x}"}


def manifest(path: Path) -> dict[str, dict]:
    """Collective: every file of the checkpoint at `path` (written by all ranks) with its
    digest; each rank reads a share of the files. Complete on rank 0."""
    rank, world = dist.get_rank(), dist.get_world_size()
    names = [None]
    if rank == 0:  # one listing, so that every rank shares out the same files
        names = [sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file())]
    dist.broadcast_object_list(names, src=0)
    mine = {name: file_digest(path / name) for name in names[0][rank::world]}
    shares = [None] * world
    dist.all_gather_object(shares, mine)
    return {name: digest for share in shares for name, digest in sorted(share.items())}


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
    with ThreadPoolExecutor(max_workers=_VERIFY_THREADS) as pool:
        digests = pool.map(lambda name: file_digest(path / name)["crc32"], by_size)
        for name, crc in zip(by_size, digests, strict=True):
            if crc != files[name]["crc32"]:
                return f"{path / name} does not hold the bytes written (CRC-32 differs)"
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
