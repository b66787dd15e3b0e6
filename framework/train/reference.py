"""The reference model of dpo and ipo: the starting model (with adapters, the base model with
the adapters disabled), as log-probabilities precomputed once or as a model run live.

precomputed: before the first step, the workers share out every train and eval pair and
compute the reference's summed log-probs once (loss/preference.py's split_logps), cached
in the data artifact under a key of the reference model (its files, precision, attention
and loss path), so a rerun or a resume reads them back and training holds one model. The
pass runs on the freshly built engine, before any checkpoint is loaded, so a resumed run
computes the same reference as a fresh one.

live: the reference runs beside the policy in every micro batch, for comparison: the
policy with its adapters disabled, or (full fine-tuning) a frozen second copy of the
starting model on every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from framework.config.schema import TrainConfig
from framework.data.dataset import TokenizedDataset
from framework.hf.resolve import model_source
from framework.loss.preference import LiveReference, sequence_logps, split_logps
from framework.loss.token import TokenLosses, token_loss_fn
from framework.model.adapters import uses_adapter
from framework.model.build import build_model

SPLITS = ("train", "eval")


def _files(source: str | None) -> list:
    if source is None:
        return []
    root = Path(source)
    files = sorted(root.rglob("*")) if root.is_dir() else [root]
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.is_file()]


def reference_key(cfg: TrainConfig, engine) -> str:
    """What the reference's log-probs depend on besides the data (the artifact's own key):
    the starting model's files (its config and seed when built from config), the weights'
    dtype, the attention kernel, the loss path and a 4-bit base."""
    module = engine.module
    identity = {
        "files": _files(model_source(cfg)),
        "model": asdict(cfg.model) if cfg.model.name_or_path is None else None,
        "seed": cfg.trainer.seed if cfg.model.name_or_path is None else None,
        "dtype": str(next(module.parameters()).dtype),
        "attention": module.config._attn_implementation,
        "loss_positions": cfg.loss.positions,
        "quantized": cfg.adapter.method == "qlora",
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[None]:
    """`module` in eval mode (no dropout) inside, its own mode again after."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def reference_losses(cfg: TrainConfig, engine, frozen: torch.nn.Module | None) -> TokenLosses:
    """Token losses of the reference, without gradients: `frozen` (a live full fine-tune's
    copy), the engine with its adapters disabled, or the engine as it is (the precomputed
    pass before the first step)."""
    losses = token_loss_fn(frozen if frozen is not None else engine, cfg.loss)
    adapters = uses_adapter(cfg.adapter) and frozen is None

    def reference(ids: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor):
        off = engine.module.disable_adapter() if adapters else contextlib.nullcontext()
        with torch.no_grad(), off:
            return losses(ids, positions, labels)

    return reference


def frozen_copy(cfg: TrainConfig, engine, tokenizer, device: torch.device) -> torch.nn.Module:
    """The starting model again, frozen, in eval mode: a live full fine-tune's reference."""
    torch.manual_seed(cfg.trainer.seed)  # the built-from-config model's initial weights
    module = engine.module
    model = build_model(
        cfg.model,
        tokenizer,
        next(module.parameters()).dtype,
        module.config._attn_implementation,
        source=model_source(cfg),
    )
    return model.to(device).eval().requires_grad_(False)


def live_reference(losses: TokenLosses) -> LiveReference:
    """A micro batch -> its pairs' reference log-probs, through `losses`."""

    def reference(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        token_losses = losses(batch["input_ids"], batch["position_ids"], batch["labels"])
        return sequence_logps(token_losses, batch)[0]

    return reference


def pair_logps(losses: TokenLosses, split: str, artifact: Path, cfg: TrainConfig, **where):
    """Collective: summed reference log-probs of every pair of the artifact's `split`,
    [pairs, 2]."""
    return split_logps(
        losses,
        TokenizedDataset.load(artifact, split),
        rows_per_batch=cfg.trainer.micro_batch_size,
        max_seq_len=cfg.data.max_seq_len,
        progress=f"reference log-probs ({split})",
        **where,
    )[0]


def precomputed_reference(
    cfg: TrainConfig, engine, artifact: Path, *, rank: int, world: int, pad_id: int, device
) -> dict[str, np.ndarray]:
    """Collective. {split: reference log-probs [pairs, 2]}, read from the artifact's cache
    or computed now over every rank and cached (rank 0 writes, atomically)."""
    path = Path(artifact) / "reference" / f"{reference_key(cfg, engine)}.npz"
    # Decided on rank 0: every rank must take the same branch of the collectives below.
    cached = torch.tensor(float(path.exists() if rank == 0 else 0), device=device)
    dist.broadcast(cached, src=0)
    if not cached.item():
        losses = reference_losses(cfg, engine, None)
        where = {"rank": rank, "world": world, "pad_id": pad_id, "device": device}
        with evaluating(engine.module):
            found = {split: pair_logps(losses, split, artifact, cfg, **where) for split in SPLITS}
        if rank == 0:
            _save(path, found)
            print(f"reference log-probs computed and cached in {path}", flush=True)
    dist.barrier()
    with np.load(path) as saved:
        return {split: saved[split] for split in SPLITS}


def _save(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    with os.fdopen(handle, "wb") as file:
        np.savez(file, **arrays)
    os.replace(staging, path)


@dataclass
class Reference:
    live: LiveReference | None  # objective.reference=live
    logps: dict[str, np.ndarray]  # per split: the train split's only when precomputed


def prepare_reference(
    cfg: TrainConfig, engine, tokenizer, artifact: Path, *, rank: int, world: int, device
) -> Reference:
    """Collective, on the engine as built (before a checkpoint is loaded): the run's
    reference, and the eval split's reference log-probs (computed here when live)."""
    where = {"rank": rank, "world": world, "pad_id": tokenizer.pad_token_id, "device": device}
    if cfg.objective.reference == "precomputed":
        return Reference(None, precomputed_reference(cfg, engine, artifact, **where))
    adapters = uses_adapter(cfg.adapter)
    frozen = None if adapters else frozen_copy(cfg, engine, tokenizer, device)
    losses = reference_losses(cfg, engine, frozen)
    with evaluating(engine.module):
        evaluation = pair_logps(losses, "eval", artifact, cfg, **where)
    return Reference(live_reference(losses), {"eval": evaluation})
