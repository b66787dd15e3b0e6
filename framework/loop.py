"""The training loop of one worker. Plain torch + DeepSpeed: it knows nothing of Ray or
Hydra, and runs under any launcher that set up torch.distributed (Ray Train, torchrun)."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import AutoTokenizer

from framework import checkpoint
from framework.attention import choose_attention
from framework.config import TrainConfig, trained_families
from framework.data.cache import first_plan, load_stats
from framework.data.dataset import TokenizedDataset
from framework.data.loader import RankBatches
from framework.engine import build_engine, deepspeed_config, partitioned_init, resolve_precision
from framework.evaluate import (
    EvalSet,
    Question,
    answer_and_score,
    eval_loss,
    greedy_samples,
    suite_questions,
)
from framework.export import export_hf
from framework.loss import summed_loss
from framework.metrics import ModelShape, clock, gather, peak_flops, peak_memory_gb, summarize
from framework.model import build_model
from framework.prepare import TOKENIZER_DIR, artifact_path
from framework.scoring import examples_worst_first, flat_metrics
from framework.selfcheck import verify_packing
from framework.stopping import StopCheck, write_stop_request
from framework.suite.build import eval_items
from framework.suite.families import FAMILIES
from framework.tracking import Tracker

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass
class WorkerContext:
    rank: int
    world_size: int
    device: torch.device
    # Called with the latest metrics after each checkpoint (Ray's report under Ray Train).
    report: Callable[[dict], None] = field(default=lambda metrics: None)
    # Unix time at which the job will be killed (a Slurm time limit), if known.
    deadline: float | None = None


def train(cfg: TrainConfig, ctx: WorkerContext) -> dict[str, float]:
    """Train to `trainer.max_steps` from the newest checkpoint (or the start), saving
    checkpoints to `run.checkpoint_dir` and the model to `run.output_dir/hf`. Stops
    early, checkpointed, when asked to (see framework.stopping). Returns the last step's
    metrics, with `stopped` set to the reason when the run stopped early."""
    out = Path(cfg.run.output_dir)
    artifact = artifact_path(out)
    tokenizer = AutoTokenizer.from_pretrained(out / TOKENIZER_DIR)
    engine, zero3, sampler, progress = _start_or_resume(cfg, ctx, tokenizer, artifact)
    start = progress.get("step", 0)
    batches = iter(sampler)
    if cfg.trainer.verify_packing and cfg.data.packing and start < cfg.trainer.max_steps:
        first = next(batches)
        _verify_packing(engine, first, ctx)
        batches = itertools.chain([first], batches)
    tracker = Tracker(cfg, enabled=ctx.rank == 0, start_step=start, totals=progress.get("totals"))
    evalset = EvalSet.load(artifact, load_stats(artifact)["source_names"])
    questions = _suite_sample(cfg)
    evaluating = evalset is not None or bool(questions)
    if evaluating and cfg.trainer.eval_every and start == 0:  # the untrained baseline
        tracker.log_eval(0, *_evaluate(engine, tokenizer, evalset, questions, cfg, ctx))
    peak = peak_flops(ctx.device, cfg.trainer.peak_tflops)
    stop = StopCheck(out, ctx.deadline, cfg.trainer.stop_before_deadline_s)
    metrics: dict = {}
    skipped_in_a_row = 0
    for step in range(start + 1, cfg.trainer.max_steps + 1):
        began = time.monotonic()
        metrics = _guarded_step(engine, batches, cfg, ctx, peak, step, skipped_in_a_row)
        skipped_in_a_row = skipped_in_a_row + 1 if metrics["skipped"] else 0
        tracker.step(metrics)
        last = step == cfg.trainer.max_steps
        if step % cfg.trainer.log_every == 0 or last:
            tracker.log(step, metrics)
        every = cfg.trainer.eval_every
        if evaluating and ((every and step % every == 0) or last):
            tracker.log_eval(step, *_evaluate(engine, tokenizer, evalset, questions, cfg, ctx))
        stopped = stop.reason(ctx.rank, ctx.device)
        if step % cfg.trainer.save_every == 0 or last or stopped:
            _save(engine, cfg, ctx, tokenizer, step, sampler, tracker)
            ctx.report({"step": step, **metrics})
        stop.observe(time.monotonic() - began)
        if stopped:
            if ctx.rank == 0:
                write_stop_request(out, stopped)  # the reason, for the driver
                print(
                    f"step {step}: {stopped}; checkpoint saved, stopping. Run the same "
                    "command again to resume.",
                    flush=True,
                )
            tracker.close()
            return {**metrics, "stopped": stopped}
    # Without ZeRO-3's build context, transformers builds whole models again (the export's).
    del zero3
    export_hf(engine.module, tokenizer, out / "hf", zero_stage=cfg.parallelism.zero_stage)
    tracker.close()
    return metrics


ZERO3_OTHER_LAYOUT_WARNING = (
    "warning: DeepSpeed restores a ZeRO-3 checkpoint on another number of ranks with exact "
    "weights but not an exact optimizer state (measured: weights 2e-3 apart two steps "
    "later, against 1e-8 under ZeRO-1/2); resume on the same number of ranks to continue "
    "exactly"
)


def _start_or_resume(cfg: TrainConfig, ctx: WorkerContext, tokenizer, artifact: Path):
    """Engine, its ZeRO-3 build context, sampler and progress: restored from the checkpoint
    to resume from (converted first when written by another number of ranks), if any."""
    resume_from = checkpoint.resume_point(cfg)
    universal = resume_from is not None and checkpoint.needs_universal(resume_from, ctx.world_size)
    if universal and ctx.rank == 0:
        print(f"converting {resume_from} to a universal checkpoint for {ctx.world_size} ranks")
        checkpoint.to_universal(resume_from)
        if cfg.parallelism.zero_stage == 3:
            print(ZERO3_OTHER_LAYOUT_WARNING, flush=True)
    dist.barrier()
    engine, zero3 = _build_engine(cfg, ctx, tokenizer, universal=universal)
    sampler = _sampler(cfg, ctx, tokenizer.pad_token_id, artifact)
    progress = {}
    if resume_from is not None:
        progress = checkpoint.load(engine, resume_from, universal=universal)
        sampler.load_state_dict(progress["sampler"])
        if ctx.rank == 0:
            print(f"resuming from {resume_from} (step {progress['step']})", flush=True)
    return engine, zero3, sampler, progress


def _save(engine, cfg: TrainConfig, ctx: WorkerContext, tokenizer, step, sampler, tracker):
    progress = {
        "world_size": ctx.world_size,
        "micro_batch_size": cfg.trainer.micro_batch_size,
        "zero_stage": cfg.parallelism.zero_stage,
        "sampler": sampler.state_dict(),
        "totals": tracker.totals,
    }
    checkpoint.save(engine, cfg, step, progress, tokenizer=tokenizer)


_NON_FINITE_FIX = "lower trainer.lr, check the data (data.inspect) or trainer.precision"


def _guarded_step(engine, batches, cfg: TrainConfig, ctx: WorkerContext, peak, step, in_a_row):
    """train_step with trainer.on_non_finite applied: stop, or skip and say so."""
    skip = cfg.trainer.on_non_finite == "skip" and in_a_row < cfg.trainer.max_skipped_steps
    try:
        metrics = train_step(
            engine, batches, cfg.trainer.grad_accum_steps, ctx.device, peak, skip_non_finite=skip
        )
    except NonFiniteLoss:
        why = (
            f"after {in_a_row} skipped steps in a row (trainer.max_skipped_steps)"
            if in_a_row
            else "so the run stops before updating the weights"
        )
        raise NonFiniteLoss(
            f"step {step}: the loss is NaN or infinite, {why}; {_NON_FINITE_FIX}"
        ) from None
    if metrics["skipped"] and ctx.rank == 0:
        print(
            f"step {step}: the loss is NaN or infinite; step skipped, weights unchanged "
            f"({in_a_row + 1} in a row, at most trainer.max_skipped_steps="
            f"{cfg.trainer.max_skipped_steps})",
            flush=True,
        )
    return metrics


def _build_engine(cfg: TrainConfig, ctx: WorkerContext, tokenizer, *, universal: bool):
    """The DeepSpeed engine, and the ZeRO-3 build context to keep alive while training."""
    gpu = ctx.device.type == "cuda"
    if gpu:
        torch.cuda.set_device(ctx.device)
    precision = resolve_precision(cfg.trainer.precision, ctx.device)
    attention = choose_attention(cfg.model.attention, ctx.device)
    if ctx.rank == 0:
        print(f"attention: {attention}; precision: {precision}", flush=True)
    ds_config = deepspeed_config(
        cfg, world_size=ctx.world_size, precision=precision, gpu=gpu, universal=universal
    )
    zero3 = partitioned_init(ds_config)
    torch.manual_seed(cfg.trainer.seed)
    model = build_model(cfg.model, tokenizer, _DTYPES[precision], attention)
    return build_engine(model, cfg, ds_config=ds_config, gpu=gpu), zero3


def _sampler(cfg: TrainConfig, ctx: WorkerContext, pad_id: int, artifact: Path) -> RankBatches:
    return RankBatches(
        TokenizedDataset.load(artifact, "train"),
        max_seq_len=cfg.data.max_seq_len,
        packing=cfg.data.packing,
        micro_batch_size=cfg.trainer.micro_batch_size,
        rank=ctx.rank,
        world_size=ctx.world_size,
        seed=cfg.trainer.seed,
        pad_id=pad_id,
        per_example=cfg.trainer.loss_average == "example",
        first_plan=first_plan(artifact),
    )


def _packed_logits(engine) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """(input ids, position ids) -> logits of packed rows; no cache, or packed examples
    would attend to each other."""
    return lambda ids, positions: (
        engine(input_ids=ids, position_ids=positions, use_cache=False).logits
    )


def _verify_packing(engine, batch: dict[str, torch.Tensor], ctx: WorkerContext) -> None:
    batch = {k: v.to(ctx.device) for k, v in batch.items()}
    fp32 = next(engine.module.parameters()).dtype == torch.float32
    worst = verify_packing(
        _packed_logits(engine),
        batch,
        rtol=1e-4 if fp32 else 2e-2,
    )
    if ctx.rank == 0:
        print(f"packing self-check passed (largest difference {worst:.1e})", flush=True)


def _suite_sample(cfg: TrainConfig) -> list[Question]:
    """trainer.eval_suite_per_family validation items of every suite family; trained and
    held-out families are told apart when the run trains on the suite."""
    per_family = cfg.trainer.eval_suite_per_family
    if not per_family:
        return []
    items = eval_items(list(FAMILIES), "validation", per_family, cfg.data.suite.seed)
    suite = cfg.data.suite
    split = None if cfg.data.sources else (trained_families(suite), suite.held_out)
    return suite_questions(items, split)


def _evaluate(
    engine, tokenizer, evalset: EvalSet | None, questions: list[Question], cfg, ctx
) -> tuple[dict, list[dict], list[dict]]:
    """Collective. (metrics, greedy samples, scored suite answers worst first): eval loss
    on every rank together, then greedy samples (on all ranks under ZeRO-3, where
    generating needs every rank's weights; on rank 0 otherwise), then the suite's
    questions shared out over the ranks."""
    engine.module.eval()
    synced = cfg.parallelism.zero_stage == 3
    metrics, samples, answers = {}, [], []
    if evalset is not None:
        metrics = eval_loss(
            _packed_logits(engine),
            evalset,
            micro_batch_size=cfg.trainer.micro_batch_size,
            rank=ctx.rank,
            world=ctx.world_size,
            pad_id=tokenizer.pad_token_id,
            device=ctx.device,
        )
        if synced or ctx.rank == 0:
            samples = greedy_samples(
                engine.module,
                tokenizer,
                evalset,
                count=cfg.trainer.eval_samples,
                max_new_tokens=cfg.trainer.eval_max_new_tokens,
                synced=synced,
                device=ctx.device,
            )
    if questions:
        summary, scored = answer_and_score(
            engine.module,
            tokenizer,
            questions,
            rank=ctx.rank,
            world=ctx.world_size,
            max_new_tokens=cfg.trainer.eval_max_new_tokens,
            batch_size=cfg.trainer.eval_batch_size,
            synced=synced,
        )
        if ctx.rank == 0:
            metrics |= flat_metrics(summary, "suite")
            answers = examples_worst_first(scored, summary)
    engine.module.train()
    return metrics, samples, answers


class NonFiniteLoss(RuntimeError):
    """A micro batch's loss is NaN or infinite on some rank; the weights are untouched."""


def _finite_everywhere(summed: torch.Tensor) -> bool:
    # Decided by every rank together, before backward, so all stop or skip at the same
    # point and no rank waits in a collective the others left.
    bad = (~torch.isfinite(summed.detach())).double()
    dist.all_reduce(bad)
    return not bad.item()


@contextlib.contextmanager
def _step_skipped(engine: deepspeed.DeepSpeedEngine) -> Iterator[None]:
    """Make the optimizer step taken inside a skipped one. ZeRO 1-3 (and DeepSpeed's mixed
    precision optimizers) skip a step whose gradient norm is not finite by themselves. A
    plain torch optimizer (ZeRO-0) does not: stand its step down for this once and raise
    the `overflow` flag that DeepSpeed's engine reads to count the step as skipped and
    hold the lr schedule, as ZeRO does."""
    optimizer = engine.optimizer
    if hasattr(optimizer, "overflow"):
        yield
        return
    step = optimizer.step
    optimizer.overflow, optimizer.step = True, lambda *args, **kwargs: None
    try:
        yield
    finally:
        optimizer.step = step
        del optimizer.overflow


def train_step(
    engine: deepspeed.DeepSpeedEngine,
    batches: Iterator[dict[str, torch.Tensor]],
    grad_accum_steps: int,
    device: torch.device,
    peak: float | None = None,
    skip_non_finite: bool = False,
) -> dict[str, float]:
    """One optimizer step over `grad_accum_steps` micro batches on every rank.

    The loss is the weighted sum of token losses over the whole global batch divided by
    the global sum of loss weights (the trained-token count when every weight is 1),
    whatever the split into ranks and micro batches: each micro batch's sum is scaled by
    (ranks x accumulation steps) / that global sum, which undoes the averaging DeepSpeed
    applies over both. `peak` (FLOP/s of one device) adds MFU to the metrics.

    A NaN or infinite loss raises NonFiniteLoss before any weight changes, or with
    `skip_non_finite` skips the optimizer step (metrics: skipped=1, loss NaN).
    """
    start = clock(device)
    lr = engine.get_lr()[0]  # the rate this step applies; the scheduler moves on in step()
    micro = [{k: v.to(device) for k, v in next(batches).items()} for _ in range(grad_accum_steps)]
    data_done = clock(device)
    weight_sum = torch.stack([b["loss_weights"][:, 1:].sum() for b in micro]).sum().double()
    dist.all_reduce(weight_sum)
    scale = dist.get_world_size() * grad_accum_steps / max(weight_sum.item(), 1e-12)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    compute_s = optimizer_s = 0.0
    skipped = False
    for batch in micro:
        began = clock(device)
        logits = engine(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
        summed, _ = summed_loss(logits, batch["labels"], batch["loss_weights"])
        if not _finite_everywhere(summed):
            if not skip_non_finite:
                raise NonFiniteLoss("the loss is not finite")
            skipped = True
        engine.backward(summed * scale)
        computed = clock(device)
        skip_here = skipped and engine.is_gradient_accumulation_boundary()
        with _step_skipped(engine) if skip_here else contextlib.nullcontext():
            engine.step()
        compute_s, optimizer_s = (
            compute_s + computed - began,
            optimizer_s + clock(device) - computed,
        )
        loss_sum += summed.detach()
    dist.all_reduce(loss_sum)
    local = {
        "tokens": sum(int(b["num_tokens"].sum()) for b in micro),
        "trained_tokens": sum(int((b["loss_weights"][:, 1:] > 0).sum()) for b in micro),
        "slots": sum(b["input_ids"].numel() for b in micro),
        "sum_sq_lengths": sum(int(b["sum_sq_lengths"].sum()) for b in micro),
        "data_wait_s": data_done - start,
        "compute_s": compute_s,
        "optimizer_s": optimizer_s,
        "step_time_s": clock(device) - start,
        "peak_memory_gb": peak_memory_gb(device),
    }
    return {
        "loss": loss_sum.item() / max(weight_sum.item(), 1e-12),
        "skipped": int(skipped),
        "lr": lr,
        "grad_norm": float(engine.get_global_grad_norm() or 0.0),
        **summarize(gather(local, device), ModelShape.of(engine.module) if peak else None, peak),
    }
