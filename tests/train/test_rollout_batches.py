"""GRPO's micro batches against the loss computed another way: completions packed into
rows and split into any number of micro batches give the loss and gradients of each
aggregation's definition, computed one unpacked completion at a time."""

from __future__ import annotations

import pytest
import torch

from framework.config.schema import ObjectiveConfig
from framework.config.sections import LossConfig
from framework.eval.sampling import Completion
from framework.loss.policy_gradient import AGGREGATIONS, LogpGapError, PolicyGradientObjective
from framework.train.rollout_batches import pack_completions, round_prompts

MAX_NEW = 7


def _completions(vocab: int) -> tuple[list[list[int]], list[Completion], torch.Tensor]:
    """Six completions of three prompts (two each), lengths 1 to 7; sampling log-probs
    near but not at the model's (a stale policy), so ratios differ from 1 and some clip."""
    g = torch.Generator().manual_seed(0)
    prompts, completions = [], []
    for j, n in enumerate([3, 7, 1, 5, 6, 2]):
        prompt = torch.randint(3, vocab, (4 + j % 3,), generator=g).tolist()
        tokens = torch.randint(3, vocab, (n,), generator=g).tolist()
        old = (-6.0 + torch.randn(n, generator=g)).tolist()
        completions.append(Completion(tokens, old, 0.0, True))
        prompts.append(prompt)
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    return prompts, completions, advantages


def _definition(model, prompts, completions, advantages, aggregation, cfg) -> torch.Tensor:
    """Each aggregation as its paper writes it, one completion at a time, no packing."""
    per_completion = []
    for prompt, completion, advantage in zip(prompts, completions, advantages, strict=True):
        ids = torch.tensor([prompt + completion.tokens])
        logps = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        start = len(prompt)
        new = logps[start - 1 : -1].gather(-1, ids[0, start:, None]).squeeze(-1)
        ratio = torch.exp(new - torch.tensor(completion.logps))
        clipped = ratio.clamp(1 - cfg.clip_low, 1 + cfg.clip_high)
        per_completion.append(-torch.minimum(ratio * advantage, clipped * advantage))
    if aggregation == "token":
        return torch.cat(per_completion).mean()
    if aggregation == "sequence":
        return torch.stack([losses.mean() for losses in per_completion]).mean()
    return torch.cat(per_completion).sum() / (len(per_completion) * MAX_NEW)


def _gradients(model) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_packed_micro_batches_in_any_layout_give_the_definitions_loss_and_gradients(
    tiny_model, tokenizer, aggregation
):
    cfg = ObjectiveConfig(name="grpo", aggregation=aggregation, clip_low=0.2, clip_high=0.28)
    prompts, completions, advantages = _completions(len(tokenizer))
    tiny_model.zero_grad()
    expected = _definition(tiny_model, prompts, completions, advantages, aggregation, cfg)
    expected.backward()
    expected_grads = _gradients(tiny_model)
    kept = torch.ones(len(completions), dtype=torch.bool)
    objective = PolicyGradientObjective(
        cfg, LossConfig(chunk_tokens=5), lambda: {}, old_logps="learner", max_logp_gap=0.1
    )
    for accum, row in [(1, 64), (2, 16), (3, 12), (8, 12)]:  # 8: some micro batches empty
        batches = pack_completions(
            prompts, completions, advantages, kept, accum=accum, max_seq_len=row,
            aggregation=aggregation, max_new_tokens=MAX_NEW, pad=0, seed=1,
        )  # fmt: skip
        tiny_model.zero_grad()
        weight = objective.global_weight(batches)
        total = sum(
            objective.summed_loss(tiny_model, {**b, "fresh": torch.tensor(1.0)}) for b in batches
        )
        (total / weight).backward()
        torch.testing.assert_close(total / weight, expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(_gradients(tiny_model), expected_grads, rtol=1e-4, atol=1e-6)
        metrics = objective.step_metrics(torch.device("cpu"))
        assert 0 < metrics["clip_fraction"] < 1, metrics  # stale log-probs: some clip


def test_groups_left_out_weigh_nothing_and_leave_the_normaliser(tiny_model, tokenizer):
    prompts, completions, advantages = _completions(len(tokenizer))
    kept = torch.tensor([True, True, False, False, True, True])
    batches = pack_completions(
        prompts, completions, advantages, kept, accum=2, max_seq_len=16,
        aggregation="token", max_new_tokens=MAX_NEW, pad=0, seed=1,
    )  # fmt: skip
    trained = sum(int((b["loss_weights"] > 0).sum()) for b in batches)
    assert trained == sum(len(c.tokens) for c, k in zip(completions, kept, strict=True) if k)
    assert float(sum(b["units"] for b in batches)) == trained


def test_rounds_take_every_prompt_once_per_epoch_in_a_seeded_order():
    rounds = [round_prompts(10, 4, r, seed=3) for r in range(5)]  # 20 prompts: 2 epochs
    flat = [i for picked in rounds for i in picked]
    assert sorted(flat[:10]) == sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # each epoch its own order
    assert rounds == [round_prompts(10, 4, r, seed=3) for r in range(5)]
    assert rounds != [round_prompts(10, 4, r, seed=4) for r in range(5)]


def test_sampler_log_probs_far_from_the_learners_stop_the_run_naming_the_key(tiny_model, tokenizer):
    """rollout.old_logps=sampler: the first update measures the sampler's gap (here the
    stand-in sampler's log-probs are nats away from the model's) and stops the run."""
    prompts, completions, advantages = _completions(len(tokenizer))
    batches = pack_completions(
        prompts, completions, advantages, torch.ones(6, dtype=torch.bool), accum=1,
        max_seq_len=64, aggregation="token", max_new_tokens=MAX_NEW, pad=0, seed=1,
    )  # fmt: skip
    objective = PolicyGradientObjective(
        ObjectiveConfig(name="grpo"), LossConfig(chunk_tokens=64), lambda: {}, old_logps="sampler",
        max_logp_gap=0.1,
    )  # fmt: skip
    objective.summed_loss(tiny_model, {**batches[0], "fresh": torch.tensor(1.0)})
    with pytest.raises(LogpGapError, match=r"rollout\.max_logp_gap=0\.1"):
        objective.step_metrics(torch.device("cpu"))
