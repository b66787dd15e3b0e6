"""Batched greedy replies against each chat decoded alone, token by token."""

from __future__ import annotations

import pytest
import torch

from framework.data.templates import stop_token_ids
from framework.eval.generate import SEGMENT, generate_replies

CHATS = [
    [{"role": "user", "content": "Reverse the word apple."}],
    [{"role": "user", "content": "Add 3 and 4."}],
    [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Sort these numbers from smallest to largest: 9, 2, 7"},
    ],
    [
        {"role": "user", "content": "Keep this number in mind: 38."},
        {"role": "assistant", "content": "OK."},
        {"role": "user", "content": "Repeat the number from before."},
    ],
    [{"role": "user", "content": "hi"}],
]


def _ids_alone(model, tokenizer, chat, max_new_tokens) -> list[int]:
    """Reference: the chat alone, unpadded, token by token without a cache."""
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    stop = stop_token_ids(tokenizer, model.generation_config.eos_token_id)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            token = int(model(input_ids=ids).logits[0, -1].argmax())
            if token in stop:
                break
            new.append(token)
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new


def _one_at_a_time(model, tokenizer, chat, max_new_tokens) -> str:
    new = _ids_alone(model, tokenizer, chat, max_new_tokens)
    return tokenizer.decode(new, skip_special_tokens=True).strip()


@pytest.mark.parametrize("segment", [SEGMENT, 2])
def test_batched_left_padded_replies_equal_each_chat_decoded_alone(tiny_model, tokenizer, segment):
    """Also when generate runs 2 tokens at a time, rows that stopped leaving the batch."""
    replies = generate_replies(
        tiny_model, tokenizer, CHATS, max_new_tokens=6, batch_size=3, segment=segment
    )
    expected = [_one_at_a_time(tiny_model, tokenizer, chat, 6) for chat in CHATS]
    assert replies == expected
    assert len(set(replies)) > 1  # the chats got their own replies, not one shared


def test_rows_that_stop_early_leave_the_batch_and_the_rest_decode_on(
    tiny_model, tokenizer, monkeypatch
):
    """A stop token that the first chat greedily produces second, and that some other
    chat does not produce within 8 tokens: the first stops after 2 generate calls of 1
    token and leaves the batch; every reply still equals its chat decoded alone."""
    free = [_ids_alone(tiny_model, tokenizer, chat, 8) for chat in CHATS]
    stop = next(t for t in free[0][1:] if any(t not in other for other in free[1:]))
    monkeypatch.setattr(tiny_model.generation_config, "eos_token_id", stop)
    replies = generate_replies(
        tiny_model, tokenizer, CHATS, max_new_tokens=8, batch_size=5, segment=1
    )
    expected = [_one_at_a_time(tiny_model, tokenizer, chat, 8) for chat in CHATS]
    assert replies == expected
    lengths = [len(tokenizer(r, add_special_tokens=False)["input_ids"]) for r in replies]
    assert min(lengths) < max(lengths)  # some row stopped while another went on


@pytest.mark.slow
def test_bf16_batched_replies_of_the_real_model_match_each_chat_decoded_alone(
    real_model_bf16, real_tokenizer
):
    """In bf16 a padded, cached batch rounds differently from a lone chat recomputed
    token by token, and greedy decoding can flip at a near tie. Measured on an AMD EPYC
    (AVX512-BF16): 4 of these 5 replies identical (in fp32: 5 of 5, the test above)."""
    replies = generate_replies(
        real_model_bf16, real_tokenizer, CHATS, max_new_tokens=16, batch_size=3
    )
    expected = [_one_at_a_time(real_model_bf16, real_tokenizer, chat, 16) for chat in CHATS]
    same = sum(r == e for r, e in zip(replies, expected, strict=True))
    print(f"bf16 batched vs alone: {same} of {len(CHATS)} replies identical")
    assert same >= len(CHATS) - 1, list(zip(replies, expected, strict=True))
    assert len(set(replies)) > 1
