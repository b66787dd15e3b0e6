"""What a training step minimises: the objective chosen by `objective.name`, its loss on a
micro batch, and the normalisation that makes a step's loss independent of how the global
batch is split into ranks and accumulation steps.

One objective today, `sft`: the weighted token cross-entropy over trained positions
(labels != IGNORE_INDEX), divided by the global sum of loss weights (the trained-token
count when every weight is 1; with trainer.loss_average=example the collator scales each
example's weights to sum to 1, giving the mean over examples)."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.distributed as dist
import torch.nn.functional as F

from framework.config.schema import ObjectiveConfig
from framework.data.pack import IGNORE_INDEX
from framework.model.attention import Forward


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-position loss of predicting labels[:, t+1] from logits[:, t]; 0 where untrained."""
    shifted = labels[:, 1:]
    losses = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(),
        shifted.flatten(),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    )
    return losses.view_as(shifted)


def summed_loss(
    logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weight x token loss, sum of weights) over the predicted positions. An
    all-masked batch gives a zero that still has a graph, so backward works and every rank
    takes part in the step."""
    shifted = weights[:, 1:].float()
    return (token_losses(logits, labels) * shifted).sum(), shifted.sum()


class Objective(Protocol):
    def global_weight(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """Collective: what the step's summed loss is divided by, over every rank's micro
        batches of the step."""

    def summed_loss(self, forward: Forward, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The micro batch's loss before normalisation (a sum over its units)."""


class TokenCrossEntropy:
    """sft: the weighted cross-entropy of every trained token."""

    def global_weight(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        weights = torch.stack([b["loss_weights"][:, 1:].sum() for b in micro_batches])
        total = weights.sum().double()
        dist.all_reduce(total)
        return total.item()

    def summed_loss(self, forward: Forward, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = forward(batch["input_ids"], batch["position_ids"])
        return summed_loss(logits, batch["labels"], batch["loss_weights"])[0]


OBJECTIVES: dict[str, type[Objective]] = {"sft": TokenCrossEntropy}


def build_objective(cfg: ObjectiveConfig) -> Objective:
    return OBJECTIVES[cfg.name]()


def backward_scale(global_weight: float, *, world_size: int, grad_accum_steps: int) -> float:
    """What each micro batch's summed loss is multiplied by before backward, so that the
    gradient is that of the global sum divided by `global_weight`: DeepSpeed averages the
    gradients over ranks and accumulation steps, which this undoes."""
    return world_size * grad_accum_steps / max(global_weight, 1e-12)
