"""The token losses every objective is built on, the `sft` objective, and the normalisation
that makes a step's loss independent of how the global batch is split into ranks and
accumulation steps (train/objective.py chooses the objective).

`sft`: the weighted token cross-entropy over trained positions
(labels != IGNORE_INDEX), divided by the global sum of loss weights (the trained-token
count when every weight is 1; with loss.average=example the collator scales each
example's weights to sum to 1, giving the mean over examples).

Token losses are computed where a label is trained only (loss.positions=trained):
the final hidden states at those positions go through the LM head and the cross-entropy
`loss.chunk_tokens` rows at a time, each chunk's logits recomputed in backward
rather than kept, so no [tokens, vocabulary] tensor exists for the micro batch. `all`
computes the logits of every position, as the model's own forward does."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from framework.config.sections import LossConfig
from framework.data.pack import IGNORE_INDEX
from framework.model.attention import packed_hidden_states, packed_logits
from framework.model.sequence_parallel import sequence_parallel

# (ids, positions, labels) -> the loss of predicting labels[:, t+1] at each position t,
# [rows, length - 1], 0 where untrained.
TokenLosses = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position loss of predicting labels[:, t+1] from logits[:, t]; 0 where untrained."""
    return _target_losses(logits, labels[:, 1:])


def _target_losses(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # targets[:, t] is what position t predicts; the logits may have a last position more.
    losses = F.cross_entropy(
        logits[:, : targets.shape[1]].flatten(0, 1).float(),
        targets.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return losses.view_as(targets)


def _targets(model: torch.nn.Module, labels: torch.Tensor) -> torch.Tensor:
    """What each position of `model`'s forward predicts: the next label (under sequence
    parallelism, at this worker's slice of the positions)."""
    sp = sequence_parallel(model)
    return labels[:, 1:] if sp is None else sp.targets(labels, IGNORE_INDEX)


def _whole(model: torch.nn.Module, losses: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The whole rows' losses [rows, length - 1], from this worker's (sequence parallelism:
    from every worker of its group)."""
    sp = sequence_parallel(model)
    return losses if sp is None else sp.whole(losses, labels.shape[1] - 1)


def _chunk_losses(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor):
    return F.cross_entropy(head(hidden).float(), targets, reduction="none")


def chunked_cross_entropy(
    hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, *, chunk_tokens: int
) -> torch.Tensor:
    """hidden [n, width] -> the cross-entropy of each target under head(hidden), [n],
    `chunk_tokens` rows at a time. In training each chunk is checkpointed: its logits are
    recomputed in backward instead of kept, so one chunk's logits exist at a time (not
    for a frozen head under ZeRO-3, below).

    At least one chunk runs, on no rows if need be, so a rank with nothing to train still
    gets a graph through the head (a zero gradient, and backward runs as on the others).
    Under ZeRO-3, where the head's weight is gathered in each call of the head, every
    rank calls it as often as the rank with the most chunks: ZeRO-3 requires every rank
    to fetch the same modules in the same order."""
    chunks = max(1, math.ceil(len(targets) / chunk_tokens))
    weight = getattr(head, "weight", None)
    partitioned = hasattr(weight, "ds_id")  # a ZeRO-3 partitioned head
    if partitioned and dist.is_initialized():
        count = torch.tensor(chunks, device=hidden.device)
        dist.all_reduce(count, op=dist.ReduceOp.MAX)
        chunks = int(count.item())
    # ZeRO-3 does not gather a frozen head (adapters) again when a chunk is recomputed in
    # backward, and torch's checkpoint then finds other tensors than the forward saved:
    # there the chunks keep their logits (those of the trained positions, not one chunk's).
    recompute = torch.is_grad_enabled() and not (partitioned and not weight.requires_grad)
    one = functools.partial(_chunk_losses, head)
    pieces = []
    for i in range(chunks):
        rows = slice(i * chunk_tokens, (i + 1) * chunk_tokens)
        if recompute:
            pieces.append(checkpoint(one, hidden[rows], targets[rows], use_reentrant=False))
        else:
            pieces.append(one(hidden[rows], targets[rows]))
    return torch.cat(pieces)


def token_loss_fn(model: torch.nn.Module, cfg: LossConfig) -> TokenLosses:
    """The token losses of packed rows through `model` (a DeepSpeed engine or a plain
    model), at trained positions only or from every position's logits, as
    loss.positions says."""
    if cfg.positions == "all":
        logits = packed_logits(model)

        def every_position(ids: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor):
            found = _target_losses(logits(ids, positions), _targets(model, labels))
            return _whole(model, found, labels)

        return every_position
    hidden_states = packed_hidden_states(model)

    def trained_positions(ids: torch.Tensor, positions: torch.Tensor, labels: torch.Tensor):
        hidden, head = hidden_states(ids, positions)
        targets = _targets(model, labels)
        trained = targets != IGNORE_INDEX
        picked = chunked_cross_entropy(
            hidden[:, : targets.shape[1]][trained],
            targets[trained],
            head,
            chunk_tokens=cfg.chunk_tokens,
        )
        # masked_scatter keeps the graph through `picked` even when nothing is trained.
        found = picked.new_zeros(trained.shape).masked_scatter(trained, picked)
        return _whole(model, found, labels)

    return trained_positions


def summed_loss(losses: torch.Tensor, weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weight x token loss, sum of weights) over the predicted positions, from
    token losses [rows, length - 1]. An all-masked batch gives a zero that still has a
    graph, so backward works and every rank takes part in the step."""
    shifted = weights[:, 1:].float()
    return (losses * shifted).sum(), shifted.sum()


class TokenCrossEntropy:
    """sft: the weighted cross-entropy of every trained token."""

    def __init__(self, cfg: LossConfig):
        self.cfg = cfg

    def global_weight(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        weights = torch.stack([b["loss_weights"][:, 1:].sum() for b in micro_batches])
        total = weights.sum().double()
        dist.all_reduce(total)
        return total.item()

    def summed_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        losses = token_loss_fn(model, self.cfg)(
            batch["input_ids"], batch["position_ids"], batch["labels"]
        )
        return summed_loss(losses, batch["loss_weights"])[0]

    def step_metrics(self, device: torch.device) -> dict[str, float]:
        return {}


def backward_scale(global_weight: float, *, world_size: int, grad_accum_steps: int) -> float:
    """What each micro batch's summed loss is multiplied by before backward, so that the
    gradient is that of the global sum divided by `global_weight`: DeepSpeed averages the
    gradients over ranks and accumulation steps, which this undoes."""
    return world_size * grad_accum_steps / max(global_weight, 1e-12)
