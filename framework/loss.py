"""Token cross-entropy over trained positions (labels != IGNORE_INDEX)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from framework.data.pack import IGNORE_INDEX


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
