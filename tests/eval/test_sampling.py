"""Sampled completions against the model run another way: each token's sampler log-prob
equals the log-softmax of a plain forward over prompt + completion (the learner's view),
and a seed gives the same completions again; also when completions end at different
segments and leave the batch between them."""

from __future__ import annotations

import pytest
import torch

from framework.data.templates import stop_token_ids
from framework.eval.sampling import sample_completions

PROMPTS = ["Reverse the word apple.", "Add 3 and 4.", "Sort these numbers: 9, 2, 7"]


def _prompt_ids(tokenizer) -> list[list[int]]:
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False
        )
        for p in PROMPTS
    ]
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def _stop(model, tokenizer, wide: bool) -> list[int]:
    # wide: a random model rarely says its stop token; 100 of its 512 tokens end most
    # completions within a few tokens, each at its own point.
    extra = list(range(100, 200)) if wide else []
    return stop_token_ids(tokenizer, model.generation_config.eos_token_id) + extra


def _sampled(model, tokenizer, seed: int, wide: bool, segment: int):
    torch.manual_seed(seed)
    prompts = [ids for ids in _prompt_ids(tokenizer) for _ in range(2)]  # groups of 2
    return prompts, sample_completions(
        model, prompts, stop=_stop(model, tokenizer, wide), pad=tokenizer.pad_token_id,
        max_new_tokens=12, batch_size=4, segment=segment,
    )  # fmt: skip


@pytest.mark.parametrize(("wide", "segment"), [(False, 32), (True, 3)])
def test_sampler_log_probs_equal_a_plain_forward_and_a_seed_repeats(
    tiny_model, tokenizer, wide, segment
):
    """Batches of 4 mix prompts of different lengths: left padding is exercised."""
    prompts, completions = _sampled(tiny_model, tokenizer, 3, wide, segment)
    stop = _stop(tiny_model, tokenizer, wide)
    assert len({tuple(c.tokens) for c in completions}) > 1
    if wide:  # ended at different segments, and some ran on past one
        assert len({(len(c.tokens) - 1) // segment for c in completions if c.ended}) > 1
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = torch.tensor([prompt + completion.tokens])
        with torch.no_grad():
            logps = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)
        start = len(prompt)
        learner = logps[start - 1 : -1].gather(-1, ids[0, start:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(completion.logps), learner, atol=1e-5, rtol=0)
        assert completion.ended == (completion.tokens[-1] in stop)
        assert not set(completion.tokens[:-1]) & set(stop)
        assert completion.ended or len(completion.tokens) == 12
    again = _sampled(tiny_model, tokenizer, 3, wide, segment)[1]
    assert [c.tokens for c in again] == [c.tokens for c in completions]
