"""What a training step minimises, as `objective.name` chooses: `sft` (loss/token.py), a
preference loss (loss/preference.py) or `grpo` (loss/policy_gradient.py, on the micro
batches of train/rollouts.py). train/step.py sees only the Objective protocol."""

from __future__ import annotations

from typing import Protocol

import torch

from framework.config.schema import TrainConfig
from framework.loss.policy_gradient import PolicyGradientObjective
from framework.loss.preference import LiveReference, PreferenceObjective
from framework.loss.token import TokenCrossEntropy


class Objective(Protocol):
    def global_weight(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        """Collective: what the step's summed loss is divided by, over every rank's micro
        batches of the step (trained tokens, or pairs)."""

    def summed_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The micro batch's loss through `model` before normalisation (a sum over its
        units)."""

    def step_metrics(self, device: torch.device) -> dict[str, float]:
        """Collective: the objective's own metrics of the micro batches since the last call."""


def build_objective(
    cfg: TrainConfig, live: LiveReference | None = None, rollouts=None
) -> Objective:
    """The run's objective; `live` gives reference log-probs when objective.reference=live;
    `rollouts` (grpo) the sampled batches whose round metrics the objective reports."""
    if cfg.objective.online:
        return PolicyGradientObjective(
            cfg.objective, cfg.loss, rollouts.reduced_metrics,
            old_logps=cfg.rollout.old_logps, max_logp_gap=cfg.rollout.max_logp_gap,
        )  # fmt: skip
    if cfg.objective.pairs:
        return PreferenceObjective(cfg.objective, cfg.loss, live)
    return TokenCrossEntropy(cfg.loss)
