"""The training loop of one worker. Plain torch + DeepSpeed: it knows nothing of Ray or
Hydra, and runs under any launcher that set up torch.distributed (Ray Train, torchrun)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoTokenizer

from framework import checkpoint
from framework.config import TrainConfig
from framework.data.dataset import TokenizedDataset
from framework.data.loader import RankBatches
from framework.data.pack import IGNORE_INDEX
from framework.engine import build_engine, resolve_precision
from framework.export import export_hf
from framework.loss import summed_loss
from framework.model import build_model
from framework.prepare import DATASET_FILE, TOKENIZER_DIR
from framework.tracking import Tracker

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    # Called with the latest metrics after each checkpoint (Ray's report under Ray Train).
    report: Callable[[dict], None] = field(default=lambda metrics: None)


def train(cfg: TrainConfig, ctx: WorkerContext) -> dict[str, float]:
    """Train for `trainer.max_steps`, checkpointing and exporting to `run.output_dir`.
    Returns the last step's metrics."""
    out = Path(cfg.run.output_dir)
    tokenizer = AutoTokenizer.from_pretrained(out / TOKENIZER_DIR)
    if ctx.device.type == "cuda":
        torch.cuda.set_device(ctx.device)
    precision = resolve_precision(cfg.trainer.precision, ctx.device)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, tokenizer, _DTYPES[precision])
    engine = build_engine(
        model,
        cfg,
        world_size=ctx.world_size,
        precision=precision,
        gpu=ctx.device.type == "cuda",
    )
    batches = iter(
        RankBatches(
            TokenizedDataset.load(str(out / DATASET_FILE)),
            max_seq_len=cfg.data.max_seq_len,
            packing=cfg.data.packing,
            micro_batch_size=cfg.trainer.micro_batch_size,
            rank=ctx.rank,
            world_size=ctx.world_size,
            seed=cfg.trainer.seed,
            pad_id=tokenizer.pad_token_id,
        )
    )
    tracker = Tracker(cfg, enabled=ctx.rank == 0)
    metrics: dict[str, float] = {}
    for step in range(1, cfg.trainer.max_steps + 1):
        metrics = train_step(engine, batches, cfg.trainer.grad_accum_steps, ctx.device)
        tracker.step()
        last = step == cfg.trainer.max_steps
        if step % cfg.trainer.log_every == 0 or last:
            tracker.log(step, metrics)
        if step % cfg.trainer.save_every == 0 or last:
            checkpoint.save(engine, out / "checkpoints", step, {"step": step})
            ctx.report({"step": step, **metrics})
    export_hf(engine.module, tokenizer, out / "hf", zero_stage=cfg.parallelism.zero_stage)
    tracker.close()
    return metrics


def train_step(
    engine: deepspeed.DeepSpeedEngine,
    batches: Iterator[dict[str, torch.Tensor]],
    grad_accum_steps: int,
    device: torch.device,
) -> dict[str, float]:
    """One optimizer step over `grad_accum_steps` micro batches on every rank.

    The loss is the sum of token losses over the whole global batch divided by its number
    of trained tokens, whatever its split into ranks and micro batches: each micro batch's
    sum is scaled by (ranks x accumulation steps) / global trained tokens, which undoes the
    averaging DeepSpeed applies over both.
    """
    start = time.perf_counter()
    lr = engine.get_lr()[0]  # the rate this step applies; the scheduler moves on in step()
    micro = [{k: v.to(device) for k, v in next(batches).items()} for _ in range(grad_accum_steps)]
    trained = sum((b["labels"][:, 1:] != IGNORE_INDEX).sum() for b in micro)
    trained = trained.to(torch.float64)
    dist.all_reduce(trained)
    trained_tokens = max(trained.item(), 1.0)
    scale = dist.get_world_size() * grad_accum_steps / trained_tokens
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    real_tokens = 0
    for batch in micro:
        labels = batch.pop("labels")
        real_tokens += int(batch.pop("num_tokens").sum())
        logits = engine(**batch, use_cache=False).logits
        summed, _ = summed_loss(logits, labels)
        engine.backward(summed * scale)
        engine.step()
        loss_sum += summed.detach()
    totals = torch.tensor([loss_sum.item(), real_tokens], dtype=torch.float64, device=device)
    dist.all_reduce(totals)
    elapsed = time.perf_counter() - start
    return {
        "loss": totals[0].item() / trained_tokens,
        "lr": lr,
        "grad_norm": float(engine.get_global_grad_norm() or 0.0),
        "tokens_per_s": totals[1].item() / elapsed,
        "trained_tokens": trained_tokens,
        "step_time_s": elapsed,
    }
