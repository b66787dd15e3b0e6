"""Batched greedy replies to chats: rendered with the tokenizer's chat template, padded on
the left, decoded until an end-of-turn token or a token budget."""

from __future__ import annotations

import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.templates import stop_token_ids

Message = dict[str, str]


@torch.no_grad()
def greedy_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: list[list[Message]],
    *,
    max_new_tokens: int,
    batch_size: int,
    synced: bool = False,
) -> list[str]:
    """The model's greedy reply to each chat (ending with a user turn), in order, without
    special tokens. Chats of similar length are batched together. `synced` (ZeRO-3, where
    every forward is a collective): every rank makes the same number of generate calls,
    padding with dummy batches, and generate runs until every rank has finished."""
    texts = [
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        for chat in chats
    ]
    # The template already wrote any BOS; the tokenizer must not add another.
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    calls = _calls_everywhere(len(batches), model.device) if synced else len(batches)
    replies: dict[int, str] = {}
    stop = stop_token_ids(tokenizer, model.generation_config.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    for call in range(calls):
        batch = batches[call] if call < len(batches) else []
        rows = [ids[i] for i in batch] or [[pad]]  # a dummy batch keeps the ranks in step
        input_ids, mask = _left_padded(rows, pad, model.device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=mask,
            do_sample=False,
            max_new_tokens=max_new_tokens,
            eos_token_id=stop,
            pad_token_id=pad,
            # Configs saved during training may say use_cache=False: without a cache every
            # new token recomputes the whole prompt.
            use_cache=True,
            synced_gpus=synced,
        )
        new = output[:, input_ids.shape[1] :]
        for row, index in enumerate(batch):
            replies[index] = tokenizer.decode(new[row], skip_special_tokens=True).strip()
    return [replies[i] for i in range(len(chats))]


def _left_padded(
    rows: list[list[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return input_ids.to(device), mask.to(device)


def _calls_everywhere(calls: int, device: torch.device) -> int:
    count = torch.tensor(calls, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count.item())
