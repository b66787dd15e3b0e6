"""Online RL's rounds as data: which prompts a round takes, its completions packed into
micro batches with the per-token fields the policy-gradient loss reads, and the metrics of
a round from its sums over ranks. Plain functions of their inputs (framework/train/
rollouts.py samples and scores; the tests build batches here without a model)."""

from __future__ import annotations

import numpy as np
import torch

from framework.data.pack import best_fit_decreasing, collate_rows
from framework.eval.sampling import Completion
from framework.loss.policy_gradient import normaliser_units, token_weight

# Per-token fields of a micro batch beside collate_rows' own, each value at its token's
# position (the objective aligns them with the token losses).
PLACED = ("old_logps", "advantages")


def round_prompts(count: int, prompts_per_round: int, round_index: int, seed: int) -> list[int]:
    """The prompt indices of round `round_index`: a stream of epochs, each a permutation
    of the `count` prompts seeded by (seed, epoch), cut into rounds."""
    first = round_index * prompts_per_round
    picked = []
    for k in range(first, first + prompts_per_round):
        epoch, position = divmod(k, count)
        picked.append(int(np.random.default_rng([seed, epoch]).permutation(count)[position]))
    return picked


def pack_completions(
    prompts: list[list[int]],
    completions: list[Completion],
    advantages: torch.Tensor,
    kept: torch.Tensor,
    *,
    accum: int,
    max_seq_len: int,
    aggregation: str,
    max_new_tokens: int,
    pad: int,
    seed: int,
) -> list[dict[str, torch.Tensor]]:
    """Each completion after its prompt, the sequences best-fit packed into rows of
    `max_seq_len` and the rows dealt into `accum` micro batches of similar size (one of
    padding where there are fewer rows). Only completion tokens are trained: weighted as
    `aggregation` says (0 where not `kept`), with their sampling log-probs and advantage;
    `units` is each micro batch's share of the step's normaliser."""
    sequences, fields, units_of = [], {name: [] for name in ("weights", *PLACED)}, []
    for j, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        n = len(completion.tokens)
        weight = token_weight(n, aggregation) if kept[j] else 0.0
        sequences.append(np.asarray(prompt + completion.tokens, dtype=np.int64))
        fields["weights"].append(_spread(len(prompt), [weight] * n))
        fields["old_logps"].append(_spread(len(prompt), completion.logps))
        fields["advantages"].append(_spread(len(prompt), [float(advantages[j])] * n))
        units_of.append(n if kept[j] else None)
    lengths = np.array([len(s) for s in sequences])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = {name: np.concatenate(values) for name, values in fields.items()}
    plan = best_fit_decreasing(lengths, max_seq_len, seed=seed)
    rows = sorted((plan.row(r) for r in range(len(plan))), key=lambda row: -int(lengths[row].sum()))
    ids, batches = np.concatenate(sequences), []
    for micro in range(accum):
        taken = rows[micro::accum]
        batch = collate_rows(
            ids, flat["weights"], offsets, taken or [np.array([], dtype=np.int64)],
            None if taken else 1, pad,
        )  # fmt: skip
        for name in PLACED:
            batch[name] = _placed(flat[name], offsets, taken, batch["input_ids"].shape)
        counted = [units_of[j] for row in taken for j in row if units_of[j] is not None]
        units = normaliser_units(counted, aggregation, max_new_tokens)
        batch["units"] = torch.tensor(units, dtype=torch.float64)
        batches.append(batch)
    return batches


def round_metrics(total: dict, most: dict, verifiers: list[str]) -> dict[str, float]:
    """A round's logged metrics from its sums over ranks (`total`) and maxima (`most`)."""
    n = max(total["completions"], 1)
    mean = total["reward_sum"] / n
    tokens = max(total["completion_tokens"], 1)
    metrics = {
        "reward": mean,
        "reward_std": max(total["reward_sq_sum"] / n - mean**2, 0.0) ** 0.5,
        "completion_tokens": total["completion_tokens"] / n,
        "completion_tokens_max": most["completion_tokens_max"],
        "truncated": total["truncated"] / n,
        "entropy": total["entropy_sum"] / tokens,
        "uniform_groups": total["uniform_groups"] / max(total["groups"], 1),
        "verifier_errors": total["verifier_errors"],
        "verifier_timeouts": total["verifier_timeouts"],
        # The slowest rank's: the others wait for it.
        "generate_s": most["generate_s"],
        "reward_s": most["reward_s"],
        "completions_per_s": total["completions"] / max(most["generate_s"], 1e-9),
        "weight_sync_s": most["weight_sync_s"],  # 0 colocated: no weights move
        "weight_sync_mb": total["weight_sync_mb"],
        "logps_s": most["logps_s"],
    }
    if "gap_sum" in total:  # the learner's log-probs of the sampled tokens vs the sampler's
        metrics["logp_gap"] = total["gap_sum"] / max(total["gap_tokens"], 1)
        metrics["logp_gap_max"] = most["gap_max"]
    for name in verifiers:
        if total[f"count/{name}"]:
            metrics[f"reward/{name}"] = total[f"reward_sum/{name}"] / total[f"count/{name}"]
    return metrics


def _spread(prompt_tokens: int, values: list[float]) -> np.ndarray:
    """One value per token of prompt + completion: 0 on the prompt."""
    return np.concatenate([np.zeros(prompt_tokens), np.asarray(values, dtype=np.float64)])


def _placed(flat: np.ndarray, offsets: np.ndarray, rows, shape) -> torch.Tensor:
    """Per-token values laid out as collate_rows lays out the tokens of `rows`."""
    placed = np.zeros(shape, dtype=np.float32)
    for r, row in enumerate(rows):
        cursor = 0
        for index in row:
            start, end = offsets[index], offsets[index + 1]
            placed[r, cursor : cursor + end - start] = flat[start:end]
            cursor += end - start
    return torch.from_numpy(placed)
