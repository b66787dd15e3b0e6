"""One optimizer step of every rank: micro batches forward and backward through the
DeepSpeed engine, the objective's loss normalised over the global batch, non-finite
losses and gradients stopped or skipped on every rank together, and the step's metrics."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import deepspeed
import torch
import torch.distributed as dist

from framework.config.schema import TrainConfig
from framework.loss.token import backward_scale
from framework.model.sequence_parallel import sequence_parallel
from framework.tracking.tracker import SKIP_COUNTS
from framework.train.metrics import ModelShape, clock, gather, peak_memory_gb, summarize
from framework.train.objective import Objective


class NonFiniteLoss(RuntimeError):
    """A step's loss or gradient norm is NaN or infinite on some rank, and the run stops;
    the weights are untouched."""


# Why a step's update did not happen: its metrics count each (0 or 1), `skipped` both.
_, LOSS_SKIP, GRADIENT_SKIP = SKIP_COUNTS


def _finite_everywhere(summed: torch.Tensor) -> bool:
    # Decided by every rank together, before backward, so all stop or skip at the same
    # point and no rank waits in a collective the others left.
    bad = (~torch.isfinite(summed.detach())).double()
    dist.all_reduce(bad)
    return not bad.item()


def _plain_gradient_norm(engine: deepspeed.DeepSpeedEngine, device: torch.device) -> float:
    """The gradient norm for a plain torch optimizer (ZeRO-0), which DeepSpeed neither
    measures nor checks, and which would apply a non-finite gradient as it is (ZeRO 1-3 do
    both). The gradients are averaged over the ranks already; MAX makes the ranks agree."""
    squares = torch.zeros((), dtype=torch.float64, device=device)
    for param in engine.module.parameters():
        if param.grad is not None:
            squares += param.grad.detach().double().pow(2).sum()
    dist.all_reduce(squares, op=dist.ReduceOp.MAX)
    return math.sqrt(squares.item())


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


def _engine_step(
    engine: deepspeed.DeepSpeedEngine, device: torch.device, *, loss_skipped: bool
) -> tuple[bool, float | None]:
    """engine.step() after a micro batch's backward; at the accumulation boundary, held
    when `loss_skipped`. Returns whether the update was skipped for a gradient norm that
    is not finite (by ZeRO 1-3 themselves; for ZeRO-0 checked here), and ZeRO-0's norm."""
    if not engine.is_gradient_accumulation_boundary():
        engine.step()
        return False, None
    plain = None if hasattr(engine.optimizer, "overflow") else _plain_gradient_norm(engine, device)
    gradient = not loss_skipped and plain is not None and not math.isfinite(plain)
    with _step_skipped(engine) if loss_skipped or gradient else contextlib.nullcontext():
        engine.step()
    return gradient or (not loss_skipped and not engine.was_step_applied()), plain


def train_step(
    engine: deepspeed.DeepSpeedEngine,
    batches: Iterator[dict[str, torch.Tensor]],
    grad_accum_steps: int,
    device: torch.device,
    peak: float | None = None,
    skip_non_finite: bool = False,
    *,
    objective: Objective,
) -> dict[str, float]:
    """One optimizer step over `grad_accum_steps` micro batches on every rank.

    The loss is `objective`'s sum over the whole global batch divided by its global weight
    (for sft: the weighted token losses over the sum of loss weights), whatever the split
    into ranks and micro batches (framework/loss/token.py). `peak` (FLOP/s of one device)
    adds MFU to the metrics.

    A NaN or infinite loss raises NonFiniteLoss before any weight changes, or with
    `skip_non_finite` skips the optimizer step (skipped=1, loss NaN). A non-finite gradient
    norm skips it anyway (_engine_step; skipped=1, the loss as it was): guarded_step
    decides whether the run goes on.
    """
    start = clock(device)
    lr = engine.get_lr()[0]  # the rate this step applies; the scheduler moves on in step()
    micro = [{k: v.to(device) for k, v in next(batches).items()} for _ in range(grad_accum_steps)]
    data_done = clock(device)
    weight = objective.global_weight(micro)
    scale = backward_scale(
        weight, world_size=dist.get_world_size(), grad_accum_steps=grad_accum_steps
    )
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    compute_s = optimizer_s = 0.0
    skipped = False
    for batch in micro:
        began = clock(device)
        summed = objective.summed_loss(engine, batch)
        if not _finite_everywhere(summed):
            if not skip_non_finite:
                raise NonFiniteLoss("the loss is not finite")
            skipped = True
        engine.backward(summed * scale)
        computed = clock(device)
        gradient_skipped, plain_norm = _engine_step(engine, device, loss_skipped=skipped)
        compute_s, optimizer_s = (
            compute_s + computed - began,
            optimizer_s + clock(device) - computed,
        )
        loss_sum += summed.detach()
    dist.all_reduce(loss_sum)
    local = {
        **_row_counts(micro, engine),
        "data_wait_s": data_done - start,
        "compute_s": compute_s,
        "optimizer_s": optimizer_s,
        "step_time_s": clock(device) - start,
        "peak_memory_gb": peak_memory_gb(device),
    }
    return {
        "loss": loss_sum.item() / max(weight, 1e-12),
        "skipped": int(skipped or gradient_skipped),
        LOSS_SKIP: int(skipped),
        GRADIENT_SKIP: int(gradient_skipped),
        "lr": lr,
        "grad_norm": _float(engine.get_global_grad_norm() if plain_norm is None else plain_norm),
        **objective.step_metrics(device),
        **summarize(gather(local, device), ModelShape.of(engine.module) if peak else None, peak),
    }


def _row_counts(micro: list[dict[str, torch.Tensor]], engine) -> dict[str, float]:
    """The tokens, trained tokens, slots and attention work of this rank's micro batches;
    under sequence parallelism a share of them, as a group's workers count the same rows."""
    share = 1 / (sp.size if (sp := sequence_parallel(engine)) else 1)
    return {
        "tokens": share * sum(int(b["num_tokens"].sum()) for b in micro),
        "trained_tokens": share * sum(int((b["loss_weights"][:, 1:] > 0).sum()) for b in micro),
        "slots": share * sum(b["input_ids"].numel() for b in micro),
        "sum_sq_lengths": share * sum(int(b["sum_sq_lengths"].sum()) for b in micro),
    }


def _float(value) -> float:
    return float("nan") if value is None else float(value)  # None: no norm was measured


NON_FINITE_FIX = "lower trainer.lr, check the data (data.inspect) or trainer.precision"


def guarded_step(
    engine: deepspeed.DeepSpeedEngine,
    batches: Iterator[dict[str, torch.Tensor]],
    cfg: TrainConfig,
    *,
    objective: Objective,
    rank: int,
    device: torch.device,
    peak: float | None,
    step: int,
    in_a_row: int,
) -> dict[str, float]:
    """train_step with trainer.on_non_finite applied: stop, or skip and say so."""
    skip = cfg.trainer.on_non_finite == "skip" and in_a_row < cfg.trainer.max_skipped_steps
    try:
        metrics = train_step(
            engine,
            batches,
            cfg.trainer.grad_accum_steps,
            device,
            peak,
            skip_non_finite=skip,
            objective=objective,
        )
    except NonFiniteLoss:
        raise NonFiniteLoss(_stop_line(step, "the loss", in_a_row)) from None
    what = "the loss" if metrics[LOSS_SKIP] else "the gradient norm"
    if metrics[GRADIENT_SKIP] and not skip:
        raise NonFiniteLoss(_stop_line(step, what, in_a_row))
    if metrics["skipped"] and rank == 0:
        print(
            f"step {step}: {what} is NaN or infinite; step skipped, weights unchanged "
            f"({in_a_row + 1} in a row, at most trainer.max_skipped_steps="
            f"{cfg.trainer.max_skipped_steps})",
            flush=True,
        )
    return metrics


def _stop_line(step: int, what: str, in_a_row: int) -> str:
    why = (
        f"after {in_a_row} skipped steps in a row (trainer.max_skipped_steps)"
        if in_a_row
        else "so the run stops before updating the weights (trainer.on_non_finite=stop; "
        "=skip skips such steps)"
    )
    return (
        f"step {step}: {what} is NaN or infinite, {why}; the newest checkpoint is the "
        f"run's result; {NON_FINITE_FIX}"
    )
