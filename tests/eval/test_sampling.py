"""Sampled completions against the model run another way: each token's sampler log-prob
equals the log-softmax of a plain forward over prompt + completion (the learner's view),
and a seed gives the same completions again."""

from __future__ import annotations

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


def _stop(model, tokenizer) -> list[int]:
    return stop_token_ids(tokenizer, model.generation_config.eos_token_id)


def _sampled(model, tokenizer, seed: int):
    stop = _stop(model, tokenizer)
    torch.manual_seed(seed)
    prompts = [ids for ids in _prompt_ids(tokenizer) for _ in range(2)]  # groups of 2
    return prompts, sample_completions(
        model, prompts, stop=stop, pad=tokenizer.pad_token_id, max_new_tokens=12, batch_size=4
    )


def test_sampler_log_probs_equal_a_plain_forward_and_a_seed_repeats(tiny_model, tokenizer):
    """Batches of 4 mix prompts of different lengths: left padding is exercised."""
    prompts, completions = _sampled(tiny_model, tokenizer, seed=3)
    stop = _stop(tiny_model, tokenizer)
    assert len({tuple(c.tokens) for c in completions}) > 1
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = torch.tensor([prompt + completion.tokens])
        with torch.no_grad():
            logps = torch.log_softmax(tiny_model(input_ids=ids).logits[0].float(), -1)
        start = len(prompt)
        learner = logps[start - 1 : -1].gather(-1, ids[0, start:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(completion.logps), learner, atol=1e-5, rtol=0)
        assert completion.ended == (completion.tokens[-1] in stop)
        assert completion.ended or len(completion.tokens) == 12
    again = _sampled(tiny_model, tokenizer, seed=3)[1]
    assert [c.tokens for c in again] == [c.tokens for c in completions]
