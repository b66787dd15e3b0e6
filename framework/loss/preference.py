"""Preference objectives (objective=dpo|ipo|simpo|orpo): the loss of each chosen / rejected
pair from its sequences' log-probabilities, and the step's mean over the global batch's
pairs, so that a step's loss does not depend on how pairs are packed into rows or split
into ranks and micro batches.

A sequence's log-probability is the sum of its reply tokens' log-probabilities (the
trained positions), taken from the same token losses as SFT (loss/token.py's
token_loss_fn: the LM head at reply positions only). With pi and rho the policy's and the
reference's summed log-probs, |y| the reply's tokens, c / r chosen / rejected, sigma the
logistic function (docs/preference.md's table shows the same):

- dpo:   -(1-eps) log sigma(h) - eps log sigma(-h),  h = beta [(pi_c - rho_c) - (pi_r - rho_r)]
- ipo:   (h - 1 / (2 beta))^2,  h = (pi_c/|c| - rho_c/|c|) - (pi_r/|r| - rho_r/|r|)
- simpo: -(1-eps) log sigma(h) - eps log sigma(-h),  h = beta (pi_c/|c| - pi_r/|r|) - gamma
- orpo:  -pi_c/|c| + lambda [-log sigma(log odds_c - log odds_r)],
         log odds = m - log(1 - exp(m)), m = pi/|y|

Rewards are beta (pi - rho) for dpo, beta (pi - rho) / |y| for ipo, beta pi / |y| for
simpo and lambda pi / |y| for orpo; accuracy is the share of pairs whose chosen reward is
the higher.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from framework.config.schema import ObjectiveConfig
from framework.config.sections import LossConfig
from framework.data.dataset import TokenizedDataset
from framework.data.pack import IGNORE_INDEX, best_fit_decreasing, collate_rows
from framework.data.preference import pair_fields, pair_lengths, sequence_plan
from framework.loss.token import TokenLosses, token_loss_fn

# A micro batch -> its pairs' reference log-probs [pairs, 2] (chosen, rejected).
LiveReference = Callable[[dict[str, torch.Tensor]], torch.Tensor]
METRIC_NAMES = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy")
LOGP_NAMES = ("logps/chosen", "logps/rejected")


def sequence_logps(
    losses: torch.Tensor, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-prob, reply tokens) of every pair's two sequences, each [pairs, 2], from
    token losses [rows, length - 1]. Position t predicts token t + 1, so it belongs to
    the sequence of t + 1; the first token of every sequence is never trained."""
    pairs = len(batch["pair_ids"])
    trained = batch["labels"][:, 1:] != IGNORE_INDEX
    # Untrained positions go to a spare bin past the last sequence.
    owner = torch.where(trained, batch["sequence_index"][:, 1:], 2 * pairs).flatten()
    sums = losses.new_zeros(2 * pairs + 1, dtype=torch.float64)
    sums = sums.index_add(0, owner, -losses.flatten().double())
    counts = torch.zeros_like(sums).index_add(0, owner, trained.flatten().double())
    return sums[:-1].view(pairs, 2), counts[:-1].view(pairs, 2)


@dataclass
class PairLogps:
    policy: torch.Tensor  # [pairs, 2] summed log-probs: chosen, rejected
    counts: torch.Tensor  # [pairs, 2] reply tokens
    reference: torch.Tensor | None  # [pairs, 2]; None for simpo, orpo


@dataclass
class PairTerms:
    losses: torch.Tensor  # [pairs]
    rewards: torch.Tensor  # [pairs, 2]: chosen, rejected


def _sigmoid_loss(h: torch.Tensor, smoothing: float) -> torch.Tensor:
    return -(1 - smoothing) * F.logsigmoid(h) - smoothing * F.logsigmoid(-h)


def pair_terms(
    cfg: ObjectiveConfig,
    policy: torch.Tensor,
    counts: torch.Tensor,
    reference: torch.Tensor | None,
) -> PairTerms:
    """Each pair's loss and rewards (module docstring) from summed log-probs [pairs, 2]."""
    beta = cfg.beta
    mean = policy / counts.clamp_min(1)
    if cfg.name == "dpo":
        rewards = beta * (policy - reference)
        return PairTerms(_sigmoid_loss(rewards[:, 0] - rewards[:, 1], cfg.label_smoothing), rewards)
    if cfg.name == "ipo":
        ratios = mean - reference / counts.clamp_min(1)
        h = ratios[:, 0] - ratios[:, 1]
        return PairTerms((h - 1 / (2 * beta)) ** 2, beta * ratios)
    if cfg.name == "simpo":
        h = beta * (mean[:, 0] - mean[:, 1]) - cfg.simpo_gamma
        return PairTerms(_sigmoid_loss(h, cfg.label_smoothing), beta * mean)
    if cfg.name == "orpo":
        # log(1 - p) as log(-expm1(m)): exact where p is close to 1.
        log_odds = mean - torch.log(-torch.expm1(mean.clamp_max(-1e-12)))
        odds_ratio = -F.logsigmoid(log_odds[:, 0] - log_odds[:, 1])
        return PairTerms(-mean[:, 0] + cfg.orpo_lambda * odds_ratio, cfg.orpo_lambda * mean)
    raise ValueError(f"objective.name={cfg.name!r} is not a preference objective")


def loss_at_zero_margin(cfg: ObjectiveConfig) -> float:
    """The loss of a pair whose policy equals its reference: ln 2 for dpo (any label
    smoothing), 1 / (2 beta)^2 for ipo."""
    return math.log(2) if cfg.name == "dpo" else (1 / (2 * cfg.beta)) ** 2


def metric_sums(terms: PairTerms, policy: torch.Tensor) -> torch.Tensor:
    """[pairs, chosen, rejected, margin, correct, logp chosen, logp rejected] summed over
    the pairs, to all-reduce and divide by the pair count."""
    chosen, rejected = terms.rewards[:, 0], terms.rewards[:, 1]
    return torch.stack(
        [
            torch.tensor(float(len(chosen)), dtype=torch.float64, device=chosen.device),
            chosen.sum(),
            rejected.sum(),
            (chosen - rejected).sum(),
            (chosen > rejected).double().sum(),
            policy[:, 0].sum(),
            policy[:, 1].sum(),
        ]
    ).detach()


def metrics_of(sums: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """metric_sums over every rank -> means per pair, named rewards/... and logps/..."""
    values = (sums[1:] / sums[0].clamp_min(1)).tolist()
    return {f"{prefix}{name}": v for name, v in zip(METRIC_NAMES + LOGP_NAMES, values, strict=True)}


class PreferenceObjective:
    """A preference loss: the sum of its pairs' losses, over the global pair count."""

    def __init__(self, cfg: ObjectiveConfig, loss: LossConfig, live: LiveReference | None = None):
        self.cfg, self.loss, self.live = cfg, loss, live
        self.sums: torch.Tensor | None = None

    def global_weight(self, micro_batches: list[dict[str, torch.Tensor]]) -> float:
        pairs = sum(len(b["pair_ids"]) for b in micro_batches)
        total = torch.tensor(
            float(pairs), dtype=torch.float64, device=micro_batches[0]["pair_ids"].device
        )
        dist.all_reduce(total)
        return total.item()

    def logps(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> PairLogps:
        """The micro batch's pairs through `model`, and their reference when there is one."""
        losses = token_loss_fn(model, self.loss)(
            batch["input_ids"], batch["position_ids"], batch["labels"]
        )
        policy, counts = sequence_logps(losses, batch)
        reference = None
        if self.cfg.needs_reference:
            reference = self.live(batch) if self.live else batch["reference_logps"]
        return PairLogps(policy, counts, reference)

    def summed_loss(self, model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        found = self.logps(model, batch)
        terms = pair_terms(self.cfg, found.policy, found.counts, found.reference)
        sums = metric_sums(terms, found.policy)
        self.sums = sums if self.sums is None else self.sums + sums
        return terms.losses.sum()

    def step_metrics(self, device: torch.device) -> dict[str, float]:
        """Collective: the step's rewards and log-probs, means over its global pairs."""
        sums, self.sums = self.sums, None
        dist.all_reduce(sums)
        return metrics_of(sums)


def split_logps(
    token_losses: TokenLosses,
    dataset: TokenizedDataset,
    *,
    rows_per_batch: int,
    max_seq_len: int,
    rank: int,
    world: int,
    pad_id: int,
    device: torch.device,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Collective. (summed log-probs, reply tokens) of every pair of `dataset`, [pairs, 2]
    each, on every rank: the pairs packed into rows (a fixed plan), `rows_per_batch` rows
    per forward, the batches shared out over the ranks. Every rank runs the same number
    of forwards (ZeRO-3 gathers weights in each). `progress`: a progress bar so labelled
    on rank 0."""
    pairs = len(dataset) // 2
    plan = sequence_plan(best_fit_decreasing(pair_lengths(dataset), max_seq_len, seed=0))
    rows = [plan.row(i) for i in range(len(plan))]
    batches = [rows[i : i + rows_per_batch] for i in range(0, len(rows), rows_per_batch)]
    calls = -(-len(batches) // world)
    found = torch.zeros(2, pairs + 1, 2, dtype=torch.float64, device=device)
    with torch.no_grad():
        for call in tqdm(range(calls), desc=progress, unit="batch", disable=not progress or rank):
            index = rank + call * world
            mine = batches[index] if index < len(batches) else batches[0][:1]
            batch = collate_rows(
                dataset.tokens, dataset.weights, dataset.offsets, mine, None, pad_id
            )
            batch |= pair_fields(mine, dataset.offsets, batch["input_ids"].shape[1])
            batch = {k: v.to(device) for k, v in batch.items()}
            losses = token_losses(batch["input_ids"], batch["position_ids"], batch["labels"])
            logps, counts = sequence_logps(losses, batch)
            # A rank out of batches reran a real one: its result goes to the spare slot.
            slots = (
                batch["pair_ids"]
                if index < len(batches)
                else torch.full_like(batch["pair_ids"], pairs)
            )
            found[0, slots], found[1, slots] = logps, counts
    dist.all_reduce(found)
    return found[0, :pairs].cpu().numpy(), found[1, :pairs].cpu().numpy()
