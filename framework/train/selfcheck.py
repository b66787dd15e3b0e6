"""Start-up check that packing is honoured, in any precision: the first micro batch's
examples must not see each other, and must get the losses packed that each gets alone. A
broken attention kernel, position ids or template then stops the run at once instead of
training a silently wrong model.

Two comparisons, because rounding differs between them:
- neighbours: the batch is run again with the examples before each one reversed (every
  other example of a row, then the others). Same shapes, same kernels, so an example whose
  own tokens did not change gets the same loss to the last bit unless it sees the ones
  before it. This is what catches leaks, of low-loss examples too, even in bf16.
- alone: up to `limit` examples run one by one. Other shapes round differently (bf16
  moves a loss by 0.45-3.2% between batch shapes on an Intel Xeon with AMX), so the bound
  depends on the precision; it catches what the neighbours cannot see, such as a
  kernel that drops an example's own first tokens.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist

from framework.config.sections import LossConfig
from framework.data.pack import IGNORE_INDEX, example_bounds
from framework.loss.preference import PreferenceObjective, loss_at_zero_margin, pair_terms
from framework.loss.token import TokenLosses, token_loss_fn

# (relative, absolute in nats) bounds on an example's mean loss, per weight dtype. With
# unchanged shapes rounding is the same: the neighbour bound is for kernels that are not
# bitwise reproducible.
NEIGHBOUR_TOLERANCE = {
    torch.float32: (1e-5, 1e-6),
    torch.bfloat16: (1e-3, 1e-4),
    torch.float16: (1e-3, 1e-4),
}
ALONE_TOLERANCE = {
    torch.float32: (1e-4, 1e-5),
    torch.bfloat16: (0.1, 0.02),
    torch.float16: (0.05, 0.01),
}


class PackingCheckFailed(RuntimeError):
    """Packed examples see each other, or do not get their losses alone."""


@dataclass(frozen=True)
class Example:
    row: int
    start: int
    end: int
    place: int  # 0 for the example that starts its row


@dataclass
class PackingCheck:
    """The largest gaps found, as allclose would weigh them (1.0 is the bound)."""

    neighbours: float
    alone: float
    neighbour_examples: int

    def summary(self) -> str:
        return (
            f"{self.neighbour_examples} examples unmoved by their neighbours, "
            f"{self.neighbours:.1e} of the bound; alone {self.alone:.1e} of the bound"
        )


def _examples(batch: dict[str, torch.Tensor]) -> list[Example]:
    """Every segment of every row (padding included), in row order."""
    return [
        Example(row, start, end, place)
        for row, starts in enumerate(example_bounds(batch["position_ids"]))
        for place, (start, end) in enumerate(itertools.pairwise(starts))
    ]


def _trained(batch: dict[str, torch.Tensor], e: Example) -> torch.Tensor:
    return batch["labels"][e.row, e.start + 1 : e.end] != IGNORE_INDEX


def _mean_loss(losses: torch.Tensor, batch: dict[str, torch.Tensor], e: Example):
    """Mean of `losses` (a [rows, n] tensor, row e.row holding the example at e.start)
    over the example's trained positions."""
    return losses[e.row, e.start : e.end - 1][_trained(batch, e)].mean()


def _gap(value: torch.Tensor, reference: torch.Tensor, tolerance: tuple[float, float]):
    """|value - reference| as a share of allclose's bound (above 1: outside it)."""
    rtol, atol = tolerance
    return ((value - reference).abs() / (atol + rtol * reference.abs())).item()


def _reversed(ids: torch.Tensor, examples: list[Example], parity: int) -> torch.Tensor:
    """`ids` with the tokens of every example at an even (0) or odd (1) place reversed."""
    changed = ids.clone()
    for e in examples:
        if e.place % 2 == parity:
            changed[e.row, e.start : e.end] = ids[e.row, e.start : e.end].flip(0)
    return changed


def _neighbour_gaps(losses: TokenLosses, batch, examples, tolerance):
    """(per trained example with others before it: how far its loss moves when the
    example just before it, and every other one, is reversed; the packed token losses)."""
    ids, positions, labels = batch["input_ids"], batch["position_ids"], batch["labels"]
    packed = losses(ids, positions, labels)
    # Examples at odd places compare with the run that reversed the even places.
    moved = [losses(_reversed(ids, examples, p), positions, labels) for p in (0, 1)]
    return [
        _gap(
            _mean_loss(moved[(e.place - 1) % 2], batch, e), _mean_loss(packed, batch, e), tolerance
        )
        for e in examples
        if e.place > 0 and _trained(batch, e).any()
    ], packed


def _alone_gaps(losses: TokenLosses, batch, packed, checked, count, tolerance) -> list[float]:
    """Per checked example, how far its packed loss is from its loss alone. `count`
    forwards whatever `checked` holds (collective)."""
    gaps = []
    for i in range(count):
        e = checked[min(i, len(checked) - 1)] if checked else Example(0, 0, 2, 0)
        own = slice(e.start, e.end)
        positions = torch.arange(e.end - e.start, device=packed.device)[None]
        alone = losses(
            batch["input_ids"][e.row : e.row + 1, own],
            positions,
            batch["labels"][e.row : e.row + 1, own],
        )
        if i < len(checked):
            reference = alone[0][_trained(batch, e)].mean()
            gaps.append(_gap(_mean_loss(packed, batch, e), reference, tolerance))
    return gaps


def _reduced(value: float, device: torch.device, op=dist.ReduceOp.MAX) -> float:
    # On the batch's device: NCCL reduces no CPU tensor.
    found = torch.tensor(value, dtype=torch.float64, device=device)
    dist.all_reduce(found, op=op)
    return found.item()


@torch.no_grad()
def verify_packing(
    losses: TokenLosses,
    batch: dict[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    limit: int = 8,
) -> PackingCheck:
    """Collective. Raises PackingCheckFailed if `batch`'s examples see each other or do
    not get their losses alone (module docstring), with token losses from `losses`;
    `dtype` is the weights'. Every rank runs the same number of forwards, as ZeRO-3
    gathers weights inside each one."""
    device = batch["input_ids"].device
    examples = _examples(batch)
    trained = [e for e in examples if _trained(batch, e).any()]
    # Alone: round-robin by place, so every row's leading example is among the first.
    checked = sorted(trained, key=lambda e: (e.place, e.row))[:limit]
    count = int(_reduced(len(checked), device))
    neighbours, packed = _neighbour_gaps(losses, batch, examples, NEIGHBOUR_TOLERANCE[dtype])
    alone = _alone_gaps(losses, batch, packed, checked, count, ALONE_TOLERANCE[dtype])
    check = PackingCheck(
        neighbours=_reduced(max(neighbours, default=0.0), device),
        alone=_reduced(max(alone, default=0.0), device),
        neighbour_examples=int(_reduced(len(neighbours), device, dist.ReduceOp.SUM)),
    )
    if check.neighbours > 1:
        _fail(
            "an example's loss changes when the examples before it in its row change "
            f"({check.neighbours:.1f}x the {dtype} bound), so packed examples see each other"
        )
    if check.alone > 1:
        _fail(
            "an example's loss differs between its packed row and running alone "
            f"({check.alone:.1f}x the {dtype} bound)"
        )
    return check


def _fail(what: str):
    raise PackingCheckFailed(
        f"packing self-check failed: {what} (attention kernel, position ids or template). "
        "Check model.attention; trainer.verify_packing=false skips this check"
    )


@contextlib.contextmanager
def without_dropout(module: torch.nn.Module) -> Iterator[None]:
    """`module` in eval mode, then back in the mode it was in. The checks compare forwards
    that must be deterministic: with dropout on (LoRA's default 0.05) every forward draws
    other masks, and the packing check failed every such run at its first batch."""
    training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(training)


def checked_first_batch(
    engine,
    batches: Iterator[dict[str, torch.Tensor]],
    cfg: LossConfig,
    *,
    rank: int,
    device: torch.device,
) -> Iterator[dict[str, torch.Tensor]]:
    """Collective. `batches`, unchanged, once its first micro batch has passed
    verify_packing through `engine`, in the precision of its weights, with the token
    losses training computes (loss.positions)."""
    first = next(batches)
    on_device = {k: v.to(device) for k, v in first.items()}
    dtype = next(engine.module.parameters()).dtype
    with without_dropout(engine.module):
        check = verify_packing(token_loss_fn(engine, cfg), on_device, dtype=dtype)
    if rank == 0:
        print(f"packing self-check passed ({check.summary()})", flush=True)
    return itertools.chain([first], batches)


class ReferenceCheckFailed(RuntimeError):
    """At step 0 the policy's log-probs differ from the reference's."""


@torch.no_grad()
def verify_reference(
    objective: PreferenceObjective, engine, batch: dict[str, torch.Tensor], *, dtype: torch.dtype
) -> tuple[float, float, float]:
    """Collective. (the loss over the batch's pairs on every rank, the largest |reward|,
    the largest gap of a sequence's log-prob from its reference as a share of the bound).
    Before any step the policy is the reference, so the rewards are 0 and the loss is its
    zero-margin value up to rounding, bounded as a per-token mean like the packing check's
    alone comparison (the reference ran in other rows). Raises ReferenceCheckFailed."""
    found = objective.logps(engine, batch)
    terms = pair_terms(objective.cfg, found.policy, found.counts, found.reference)
    tokens = found.counts.clamp_min(1)
    rtol, atol = ALONE_TOLERANCE[dtype]
    bound = atol + rtol * (found.reference / tokens).abs()
    gap = _reduced(
        (((found.policy - found.reference) / tokens).abs() / bound).max().item(),
        device=tokens.device,
    )
    loss = torch.stack(
        [
            terms.losses.sum(),
            torch.tensor(float(len(terms.losses)), dtype=torch.float64, device=tokens.device),
        ]
    )
    dist.all_reduce(loss)
    largest = _reduced(terms.rewards.abs().max().item(), tokens.device)
    mean_loss = (loss[0] / loss[1]).item()
    if gap > 1:
        name, zero = objective.cfg.name, loss_at_zero_margin(objective.cfg)
        raise ReferenceCheckFailed(
            f"reference self-check failed: before the first step the policy's log-probs are "
            f"{gap:.1f}x the {dtype} bound away from the reference's (step-0 {name} loss "
            f"{mean_loss:.4f}, expected {zero:.4f}; rewards up to {largest:.3g}, expected 0). "
            "The reference log-probs do not belong to this model or data: delete the "
            "artifact's reference/ cache, or objective.verify_reference=false skips this check"
        )
    return mean_loss, largest, gap


def checked_reference(
    engine, batches: Iterator[dict[str, torch.Tensor]], objective, *, rank: int, device
) -> Iterator[dict[str, torch.Tensor]]:
    """Collective. `batches`, unchanged, once its first micro batch passed verify_reference."""
    first = next(batches)
    on_device = {k: v.to(device) for k, v in first.items()}
    dtype = next(engine.module.parameters()).dtype
    with without_dropout(engine.module):
        loss, largest, gap = verify_reference(objective, engine, on_device, dtype=dtype)
    if rank == 0:
        zero = loss_at_zero_margin(objective.cfg)
        print(
            f"reference self-check passed: step-0 {objective.cfg.name} loss {loss:.6f} "
            f"(expected {zero:.6f}), rewards at most {largest:.2g} from 0, log-probs "
            f"{gap:.1e} of the bound",
            flush=True,
        )
    return itertools.chain([first], batches)
