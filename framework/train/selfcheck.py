"""Start-up check that packing is honoured: the first micro batch's examples must get the
same losses packed as each gets alone. A broken attention kernel, position ids or template
then stops the run at once instead of training a silently wrong model."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import torch
import torch.distributed as dist

from framework.data.pack import IGNORE_INDEX, example_bounds
from framework.model.attention import Forward, packed_logits
from framework.train.loss import token_losses


class PackingCheckFailed(RuntimeError):
    """Packed and unpacked losses disagree."""


def _examples(batch: dict[str, torch.Tensor], limit: int) -> list[tuple[int, int, int]]:
    """(row, start, end) of up to `limit` examples that have trained tokens."""
    found = []
    for row, starts in enumerate(example_bounds(batch["position_ids"])):
        for start, end in itertools.pairwise(starts):
            if (batch["labels"][row, start + 1 : end] != IGNORE_INDEX).any():
                found.append((row, start, end))
    return found[:limit]


@torch.no_grad()
def verify_packing(
    forward: Forward, batch: dict[str, torch.Tensor], *, rtol: float, limit: int = 8
) -> float:
    """Collective. Returns the largest relative difference between an example's mean loss
    packed and alone; raises PackingCheckFailed above `rtol`. Every rank runs the same
    number of forwards (some repeated), as ZeRO-3 gathers weights inside each one."""
    packed = token_losses(forward(batch["input_ids"], batch["position_ids"]), batch["labels"])
    examples = _examples(batch, limit)
    count = torch.tensor(len(examples))
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    worst = torch.zeros(())
    for i in range(int(count)):
        row, start, end = examples[min(i, len(examples) - 1)] if examples else (0, 0, 1)
        ids, labels = (
            batch["input_ids"][row : row + 1, start:end],
            batch["labels"][row : row + 1, start:end],
        )
        positions = torch.arange(end - start, device=ids.device)[None]
        alone = token_losses(forward(ids, positions), labels)
        trained = labels[:, 1:] != IGNORE_INDEX
        if not examples or not trained.any():
            continue
        together = packed[row : row + 1, start : end - 1][trained].mean()
        apart = alone[trained].mean()
        worst = torch.maximum(worst, ((together - apart).abs() / apart.abs().clamp_min(1e-6)).cpu())
    dist.all_reduce(worst, op=dist.ReduceOp.MAX)
    if worst.item() > rtol:
        raise PackingCheckFailed(
            f"packing self-check failed: an example's loss differs by {worst.item():.2%} "
            "between its packed row and running alone, so packed examples are not kept "
            "apart (attention kernel, position ids or template). Check model.attention; "
            "trainer.verify_packing=false skips this check"
        )
    return worst.item()


def checked_first_batch(
    engine, batches: Iterator[dict[str, torch.Tensor]], *, rank: int, device: torch.device
) -> Iterator[dict[str, torch.Tensor]]:
    """Collective. `batches`, unchanged, once its first micro batch has passed
    verify_packing through `engine` (a tolerance fit for the weights' dtype)."""
    first = next(batches)
    on_device = {k: v.to(device) for k, v in first.items()}
    fp32 = next(engine.module.parameters()).dtype == torch.float32
    worst = verify_packing(packed_logits(engine), on_device, rtol=1e-4 if fp32 else 2e-2)
    if rank == 0:
        print(f"packing self-check passed (largest difference {worst:.1e})", flush=True)
    return itertools.chain([first], batches)
