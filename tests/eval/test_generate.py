"""Batched greedy replies against each chat decoded alone, token by token."""

from __future__ import annotations

import pytest
import torch

from framework.data.templates import stop_token_ids
from framework.eval.generate import SEGMENT, generate_replies, generate_reply_ids

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


# bf16 keeps 8 significant bits: a logit rounds by up to 2^-8 of its size, and 30 layers
# of such rounding move it several times that. Two tokens within 2% of the largest logit
# (about 4 bf16 steps at that size) are a tie bf16 cannot split reliably. Measured: a
# lawful flip parted at 0.24%; ignoring the padding mask parted at 3.8% and 22%.
BF16_TIE = 0.02


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
def test_bf16_batched_replies_of_the_real_slice_part_from_each_chat_alone_only_at_a_tie(
    real_slice_bf16, real_tokenizer
):
    """In bf16 a padded, cached batch rounds differently from a lone chat recomputed
    token by token, so greedy decoding may flip where two tokens nearly tie, and how often
    depends on the CPU's bf16 kernels (4 of 5 replies identical on one AMD EPYC, 3 on
    another). What must hold everywhere: where a batched reply first parts from its chat
    decoded alone, the alone model rated the two tokens within bf16 rounding of each other.
    A batching fault (wrong padding, positions or cache) parts at a clear winner. On the
    2-layer slice of the real model: its vocabulary, template and stop tokens, in bf16."""
    model, tokenizer = real_slice_bf16, real_tokenizer
    batched = generate_reply_ids(model, tokenizer, CHATS, max_new_tokens=16, batch_size=3)
    stop = stop_token_ids(tokenizer, model.generation_config.eos_token_id)
    gaps = []
    for chat, got in zip(CHATS, batched, strict=True):
        alone = _ids_alone(model, tokenizer, chat, 16)
        if got == alone:
            continue
        # Where they part; a reply that is a prefix of the other parts by stopping.
        k = next(
            i for i, (a, b) in enumerate(zip([*alone, -1], [*got, -1], strict=False)) if a != b
        )
        logits = _next_logits(model, tokenizer, chat, alone[:k]).float()
        best = logits[alone[k]] if k < len(alone) else logits[stop].max()
        taken = logits[got[k]] if k < len(got) else logits[stop].max()
        gaps.append((k, round(float(best - taken), 3), round(float(logits.abs().max()), 1)))
    print(
        f"bf16 batched vs alone: {len(CHATS) - len(gaps)} of {len(CHATS)} identical; "
        f"(first differing token, logit gap, largest |logit|): {gaps}"
    )
    assert all(gap <= BF16_TIE * largest for _, gap, largest in gaps), gaps
    assert len(set(map(tuple, batched))) > 1


def _next_logits(model, tokenizer, chat, reply_prefix: list[int]) -> torch.Tensor:
    ids = tokenizer.apply_chat_template(chat, add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not isinstance(ids, torch.Tensor) else ids
    ids = torch.cat([ids, torch.tensor([reply_prefix], dtype=ids.dtype)], dim=1)
    with torch.no_grad():
        return model(input_ids=ids).logits[0, -1]
