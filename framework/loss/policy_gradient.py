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
import torch.distributed as dist

from framework.config.sections import LossConfig
from framework.data.pack import IGNORE_INDEX
from framework.loss.token import token_loss_fn

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
    (the clip fraction). `advantages` broadcasts to `logps` and `old_logps`."""
    ratio = torch.exp(logps - old_logps)
    advantage = advantages
    unclipped = ratio * advantage
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * advantage
    return -torch.minimum(unclipped, clipped), clipped < unclipped


def k3_kl(logps: torch.Tensor, reference_logps: torch.Tensor) -> torch.Tensor:
    """Per token, the k3 estimate of KL(policy || reference): exp(d) - d - 1 with d the
    reference's minus the policy's log-probability; never negative, unbiased."""
    delta = reference_logps - logps
    return torch.exp(delta) - delta - 1


def token_weight(completion_tokens: int, aggregation: str) -> float:
    """The weight of each token's loss of a completion of `completion_tokens` tokens in
    its micro batch's summed loss."""
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r}: give one of {AGGREGATIONS}")
    if aggregation == "sequence":
        return 1.0 / max(completion_tokens, 1)
    return 1.0


def normaliser_units(
    completion_tokens: list[int], aggregation: str, max_completion_tokens: int
) -> float:
    """The share of the step's normaliser of a micro batch holding completions of these
    lengths; summed over every micro batch of every rank, it divides the summed loss."""
    if aggregation == "token":
        return float(sum(completion_tokens))
    if aggregation == "sequence":
        return float(len(completion_tokens))
    return float(len(completion_tokens) * max_completion_tokens)


class PolicyGradientObjective:
    """grpo: the clipped importance-ratio loss of sampled completions (micro batches from
    framework/train/rollouts.py), plus objective.kl_coef x k3 KL to the reference,
    normalised as objective.aggregation says. On the first update of a generation batch
    the ratio is 1: its mean absolute log-prob gap is logged as first_update_logp_gap."""

    def __init__(self, cfg, loss: LossConfig, round_metrics, *, old_logps: str, max_logp_gap):
        self.cfg, self.loss = cfg, loss
        self.old_logps, self.max_logp_gap = old_logps, max_logp_gap
        self.round_metrics = round_metrics  # collective: the current round's metrics
        self._sums = torch.zeros(len(_SUMS), dtype=torch.float64)

    def global_weight(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        total = torch.stack([b["units"] for b in micro_batches]).sum().double()
        dist.all_reduce(total)
        return total.item()

    def summed_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        labels = batch["labels"]
        losses = token_loss_fn(model, self.loss)(batch["input_ids"], batch["position_ids"], labels)
        logps, trained = -losses, labels[:, 1:] != IGNORE_INDEX
        old = batch["old_logps"][:, 1:]
        per_token, clipped = clipped_token_losses(
            logps, old, batch["advantages"][:, 1:],
            clip_low=self.cfg.clip_low, clip_high=self.cfg.clip_high,
        )  # fmt: skip
        kl = torch.zeros_like(per_token)
        if self.cfg.kl_coef:
            kl = k3_kl(logps, batch["reference_logps"][:, 1:])
            per_token = per_token + self.cfg.kl_coef * kl
        self._observe(logps.detach(), old, trained, clipped, kl.detach(), batch["fresh"])
        return (per_token * batch["loss_weights"][:, 1:]).sum()

    def _observe(self, logps, old, trained, clipped, kl, fresh) -> None:
        gap = (logps - old).abs()[trained]
        count = float(trained.sum())
        fresh_count = count * float(fresh)
        ratio = torch.exp(logps - old)[trained]
        self._sums += torch.tensor(
            [count, float(clipped[trained].sum()), float(kl[trained].sum()),
             float(ratio.sum()), fresh_count, float(gap.sum()) * float(fresh)],
            dtype=torch.float64,
        )  # fmt: skip

    def step_metrics(self, device: torch.device) -> dict[str, float]:
        sums = self._sums.clone().to(device)
        dist.all_reduce(sums)
        self._sums.zero_()
        found = dict(zip(_SUMS, sums.tolist(), strict=True))
        tokens = max(found["tokens"], 1.0)
        metrics = {
            "clip_fraction": found["clipped"] / tokens,
            "kl": found["kl"] / tokens,
            "ratio": found["ratio"] / tokens,
            **self.round_metrics(),
        }
        if found["fresh_tokens"]:
            # old_logps=learner: 0 up to kernel noise; =sampler: the sampler's gap, checked.
            gap = metrics["first_update_logp_gap"] = found["gap"] / found["fresh_tokens"]
            if self.old_logps == "sampler":
                check_logp_gap(gap, self.max_logp_gap)
        return metrics


_SUMS = ("tokens", "clipped", "kl", "ratio", "fresh_tokens", "gap")


class LogpGapError(RuntimeError):
    """The learner's log-probs of the sampled tokens are not the sampler's."""


def check_logp_gap(gap: float, limit: float) -> None:
    """Stop on a mean gap between the learner's and the sampler's log-probs of the sampled
    tokens beyond what precision explains (rollout.max_logp_gap)."""
    if gap > limit:
        raise LogpGapError(
            f"the learner's log-probs of the sampled tokens differ from the sampler's by "
            f"{gap:.3g} nats on average, over rollout.max_logp_gap={limit}: sampling and "
            "training disagree beyond precision (a kernel, attention or weight-sync fault); "
            "check model.attention and trainer.precision, or raise rollout.max_logp_gap "
            "knowingly"
        )
