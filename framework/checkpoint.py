"""Checkpoint layout: `<root>/step_<N>/` holds DeepSpeed's shards and, written last by
rank 0 once every rank has finished, a COMMITTED marker. Only committed ones count."""

from __future__ import annotations

import os
from pathlib import Path

import deepspeed
import torch.distributed as dist

COMMIT_MARKER = "COMMITTED"


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def save(engine: deepspeed.DeepSpeedEngine, root: str | Path, step: int, state: dict) -> Path:
    """Collective: every rank writes its shards, then the commit marker is written."""
    path = step_dir(root, step)
    # DeepSpeed's own `latest` file is written before all ranks are done: we do not use it.
    engine.save_checkpoint(str(root), tag=path.name, client_state=state, save_latest=False)
    dist.barrier()
    if dist.get_rank() == 0:
        marker = path / COMMIT_MARKER
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(f"{step}\n")
        os.replace(tmp, marker)
    dist.barrier()
    return path


def committed(root: str | Path) -> list[Path]:
    """Committed checkpoints under `root`, oldest first."""
    if not Path(root).is_dir():
        return []
    return sorted(p.parent for p in Path(root).glob(f"step_*/{COMMIT_MARKER}"))
