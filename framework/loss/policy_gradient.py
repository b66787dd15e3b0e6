"""The policy-gradient losses of online RL with verifiable rewards (GRPO and its
successors), over completions sampled in groups of G per prompt.

Each piece is a plain function of tensors so that the learner, the tests and a benchmark
compute the same numbers:
- advantages from each group's rewards: minus the group mean (GRPO; divided by the group's
  standard deviation unless Dr. GRPO's unscaled form is asked for) or minus the mean of the
  other G-1 rewards (RLOO);
- the clipped importance-ratio objective per token, with separate low and high clip bounds
  (DAPO's clip-higher), and the k3 estimate of the KL to a reference;
- the aggregation of token losses into a step's loss, as per-token weights and a number of
  normaliser units: the step's loss is sum(weights * token losses) over the global batch
  divided by the global sum of the units. Whatever the split into ranks and accumulation
  steps, each micro batch contributes its own sums (loss/token.py's backward_scale does
  the rest), so the loss is exact under any layout:
    token     (DAPO)      every completion token of the global batch weighs the same;
    sequence  (GRPO)      each completion's token mean, averaged over the completions;
    constant  (Dr. GRPO)  the token sum divided by completions x max completion tokens.
"""

from __future__ import annotations

import torch

BASELINES = ("mean", "leave_one_out")
AGGREGATIONS = ("token", "sequence", "constant")
# Added to a group's standard deviation before dividing by it (as TRL does): a group whose
# rewards are all equal has advantages 0, not NaN.
STD_EPSILON = 1e-4


def _groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(
            f"{rewards.numel()} rewards do not form groups of {group_size} (at least 2 each)"
        )
    return rewards.reshape(-1, group_size).double()


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, baseline: str = "mean", scale: bool = True
) -> torch.Tensor:
    """One advantage per completion, from the rewards of its group (consecutive runs of
    `group_size` completions of one prompt). `scale` divides by the group's standard
    deviation (unbiased, as torch.std), plus STD_EPSILON."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline={baseline!r}: give one of {BASELINES}")
    groups = _groups(rewards, group_size)
    if baseline == "mean":
        advantages = groups - groups.mean(dim=1, keepdim=True)
    else:  # RLOO: each completion against the mean of the others
        others = (groups.sum(dim=1, keepdim=True) - groups) / (group_size - 1)
        advantages = groups - others
    if scale:
        advantages = advantages / (groups.std(dim=1, keepdim=True) + STD_EPSILON)
    return advantages.flatten().to(rewards.dtype)


def uniform_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per group, whether all its rewards are equal: its advantages are 0 and it teaches
    nothing (DAPO drops such groups; they are counted either way)."""
    groups = _groups(rewards, group_size)
    return (groups == groups[:, :1]).all(dim=1)


def clipped_token_losses(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token, -min(r A, clip(r, 1 - clip_low, 1 + clip_high) A) with r the ratio of the
    policy's to the sampling policy's probability, and whether the clipped term was taken
    (the clip fraction). `logps` and `old_logps` are [rows, tokens]; `advantages` [rows]."""
    ratio = torch.exp(logps - old_logps)
    advantage = advantages.unsqueeze(-1)
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantage
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
    """Per token, the k3 estimate of KL(policy || reference): exp(d) - d - 1 with d the
    reference's minus the policy's log-probability; never negative, unbiased."""
    delta = reference_logps - logps
    return torch.exp(delta) - delta - 1


def token_weights(completion_mask: torch.Tensor, aggregation: str) -> torch.Tensor:
    """The weight of each token's loss in a micro batch's summed loss ([rows, tokens]; 0
    off the completions)."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}: give one of {AGGREGATIONS}")
    mask = completion_mask.to(torch.float64)
    if aggregation == "sequence":
        return mask / mask.sum(dim=-1, keepdim=True).clamp(min=1)
    return mask


def normaliser_units(
    completion_mask: torch.Tensor, aggregation: str, max_completion_tokens: int
) -> float:
    """This micro batch's share of the step's normaliser; summed over every micro batch of
    every rank, it divides the summed loss."""
    completions = int((completion_mask.sum(dim=-1) > 0).sum())
    if aggregation == "token":
        return float(completion_mask.sum())
    if aggregation == "sequence":
        return float(completions)
    return float(completions * max_completion_tokens)
