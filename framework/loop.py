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
from framework.data.cache import first_plan
from framework.data.dataset import TokenizedDataset
from framework.data.loader import RankBatches
from framework.engine import build_engine, resolve_precision
from framework.export import export_hf
from framework.loss import summed_loss
from framework.model import build_model
from framework.prepare import TOKENIZER_DIR, artifact_path
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
    artifact = artifact_path(out)
    sampler = RankBatches(
        TokenizedDataset.load(artifact, "train"),
        max_seq_len=cfg.data.max_seq_len,
        packing=cfg.data.packing,
        micro_batch_size=cfg.trainer.micro_batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=cfg.trainer.seed,
        pad_id=tokenizer.pad_token_id,
        per_example=cfg.trainer.loss_average == "example",
        first_plan=first_plan(artifact),
    )
    batches = iter(sampler)
    tracker = Tracker(cfg, enabled=ctx.rank == 0)
    metrics: dict[str, float] = {}
    for step in range(1, cfg.trainer.max_steps + 1):
        metrics = train_step(engine, batches, cfg.trainer.grad_accum_steps, ctx.device)
        tracker.step()
        last = step == cfg.trainer.max_steps
        if step % cfg.trainer.log_every == 0 or last:
            tracker.log(step, metrics)
        if step % cfg.trainer.save_every == 0 or last:
            state = {"step": step, "sampler": sampler.state_dict()}
            checkpoint.save(engine, out / "checkpoints", step, state)
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

    The loss is the weighted sum of token losses over the whole global batch divided by
    the global sum of loss weights (the trained-token count when every weight is 1),
    whatever the split into ranks and micro batches: each micro batch's sum is scaled by
    (ranks x accumulation steps) / that global sum, which undoes the averaging DeepSpeed
    applies over both.
    """
    start = time.perf_counter()
    lr = engine.get_lr()[0]  # the rate this step applies; the scheduler moves on in step()
    micro = [{k: v.to(device) for k, v in next(batches).items()} for _ in range(grad_accum_steps)]
    totals = torch.zeros(3, dtype=torch.float64, device=device)  # weight sum, trained, tokens
    for batch in micro:
        totals[0] += batch["loss_weights"][:, 1:].sum()
        totals[1] += (batch["loss_weights"][:, 1:] > 0).sum()
        totals[2] += batch["num_tokens"].sum()
    dist.all_reduce(totals)
    weight_sum = max(totals[0].item(), 1e-12)
    scale = dist.get_world_size() * grad_accum_steps / weight_sum
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    for batch in micro:
        logits = engine(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        summed, _ = summed_loss(logits, batch["labels"], batch["loss_weights"])
        engine.backward(summed * scale)
        engine.step()
        loss_sum += summed.detach()
    dist.all_reduce(loss_sum)
    elapsed = time.perf_counter() - start
    return {
        "loss": loss_sum.item() / weight_sum,
        "lr": lr,
        "grad_norm": float(engine.get_global_grad_norm() or 0.0),
        "tokens_per_s": totals[2].item() / elapsed,
        "trained_tokens": totals[1].item(),
        "step_time_s": elapsed,
    }
