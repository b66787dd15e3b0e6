"""Batched greedy (or sampled) replies to chats: rendered with the tokenizer's chat
template, padded on the left, decoded until an end-of-turn token or a token budget."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm
from transformers import DynamicCache, PreTrainedModel, PreTrainedTokenizerBase
from transformers.cache_utils import DynamicLayer

from framework.data.templates import stop_token_ids

Message = dict[str, str]


# New tokens per generate call; then rows that have finished leave the batch, so a batch
# no longer decodes padding for every row until its longest reply ends (IFEval's 1280-token
# budget: 30% of the row-steps of the base model's batches).
SEGMENT = 128


def generate_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: list[list[Message]],
    **options: Any,
) -> list[str]:
    """generate_reply_ids' replies as text, without special tokens or outer whitespace."""
    replies = generate_reply_ids(model, tokenizer, chats, **options)
    return [tokenizer.decode(new, skip_special_tokens=True).strip() for new in replies]


@torch.no_grad()
def generate_reply_ids(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: list[list[Message]],
    *,
    max_new_tokens: int,
    batch_size: int,
    synced: bool = False,
    segment: int = SEGMENT,
    progress: bool = False,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[list[int]]:
    """The token ids of the model's greedy reply to each chat (ending with a user turn), in
    order, up to the first stop token; with `temperature` > 0, a reply sampled at that
    temperature within `top_p` (torch's generator: seed it for reproducible samples). Chats
    of similar length are batched together. `synced` (ZeRO-3, where every forward is a
    collective): every rank makes the same number of generate calls, padding with dummy
    batches, and generate runs until every rank has finished. `progress`: a progress bar
    over the batches on stderr."""
    texts = [
        tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        for chat in chats
    ]
    # The template already wrote any BOS; the tokenizer must not add another.
    ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    calls = calls_everywhere(len(batches), model.device) if synced else len(batches)
    stop = stop_token_ids(tokenizer, model.generation_config.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop[0]
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p}
    generate = functools.partial(
        model.generate,
        **(sampling if temperature > 0 else {"do_sample": False}),
        eos_token_id=stop,
        pad_token_id=pad,
        # Configs saved during training may say use_cache=False: without a cache every new
        # token recomputes the whole prompt.
        use_cache=True,
        synced_gpus=synced,
    )
    # Under ZeRO-3 every rank must make the same calls: one whole call per batch.
    segment = max_new_tokens if synced else segment
    replies: dict[int, list[int]] = {}
    for call in tqdm(range(calls), desc="generating", unit="batch", disable=not progress):
        batch = batches[call] if call < len(batches) else []
        rows = [ids[i] for i in batch] or [[pad]]  # a dummy batch keeps the ranks in step
        input_ids, mask = left_padded(rows, pad, model.device)
        cache = preallocated_cache(model, input_ids.shape[1] + max_new_tokens)
        pieces = in_segments(generate, input_ids, mask, cache, stop, max_new_tokens, segment)
        for index, new in zip(batch, _up_to_stop(pieces, stop, len(rows)), strict=False):
            replies[index] = new
    return [replies[i] for i in range(len(chats))]


def _up_to_stop(pieces, stop: list[int], count: int) -> list[list[int]]:
    """Each of `count` rows' new tokens over in_segments' calls, up to its first stop."""
    tokens: list[list[int]] = [[] for _ in range(count)]
    for rows, new in pieces:
        for row, row_new in zip(rows, new, strict=True):
            ended = next((i for i, t in enumerate(row_new) if t in stop), None)
            tokens[row] += row_new[:ended]
    return tokens


def in_segments(
    generate: Callable[..., torch.Tensor],
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    cache: DynamicCache,
    stop: list[int],
    max_new_tokens: int,
    segment: int,
) -> Iterator[tuple[list[int], list[list[int]]]]:
    """`segment`-token generate calls that carry the cache over; after each, a row that
    has stopped leaves the batch. Yields, per call, the rows it generated for (indices into
    the batch) and each one's new tokens of that call (past its stop token too)."""
    width = input_ids.shape[1]
    live = list(range(input_ids.shape[0]))
    while live:
        budget = max_new_tokens - (input_ids.shape[1] - width)
        output = generate(
            input_ids=input_ids,
            attention_mask=mask,
            max_new_tokens=min(segment, budget),
            cache=cache,
        )
        new = output[:, input_ids.shape[1] :].tolist()
        yield live, new
        kept = [
            slot
            for slot, row_new in enumerate(new)
            if not any(t in stop for t in row_new) and len(row_new) < budget
        ]
        if kept and len(kept) < len(live):
            cache.batch_select_indices(torch.tensor(kept, device=output.device))
        mask = torch.cat([mask, torch.ones_like(output[:, : len(new[0])])], dim=1)
        live, input_ids, mask = [live[k] for k in kept], output[kept], mask[kept]


def shared_greedy_replies(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    chats: list[list[Message]],
    *,
    rank: int,
    world: int,
    max_new_tokens: int,
    batch_size: int,
    synced: bool = False,
    progress: bool = False,
) -> list[str] | None:
    """Collective when world > 1: rank r answers chats r, r + world, ... greedily; rank 0
    gets every reply in chat order, the other ranks None."""
    mine = list(range(rank, len(chats), world))
    replies = generate_replies(
        model,
        tokenizer,
        [chats[i] for i in mine],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        synced=synced,
        progress=progress and rank == 0,
    )
    answered = list(zip(mine, replies, strict=True))
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, answered)
        answered = [pair for part in gathered for pair in part]
    if rank != 0:
        return None
    by_index = dict(answered)
    return [by_index[i] for i in range(len(chats))]


class _PreallocatedLayer(DynamicLayer):
    """A cache layer whose keys and values are written into a buffer sized for the whole
    generation. transformers' DynamicLayer concatenates every new token, copying the
    whole cache: 40% of a decoding step at 800 cached tokens."""

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
            shape = (*key_states.shape[:-2], self.capacity, key_states.shape[-1])
            self._keys, self._values = key_states.new_empty(shape), value_states.new_empty(shape)
            self.length = 0
        end = self.length + key_states.shape[-2]
        self._keys[..., self.length : end, :] = key_states
        self._values[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._keys, self._values = self._keys[indices], self._values[indices]
            end = self.length
            self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]


def preallocated_cache(model: PreTrainedModel, capacity: int) -> DynamicCache:
    """A cache for up to `capacity` tokens per row, written in place; a model with sliding
    or other special layers keeps transformers' own."""
    cache = DynamicCache(config=model.config)
    if all(type(layer) is DynamicLayer for layer in cache.layers):
        cache.layers = [_PreallocatedLayer(capacity) for _ in cache.layers]
    return cache


def left_padded(
    rows: list[list[int]], pad: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return input_ids.to(device), mask.to(device)


def calls_everywhere(calls: int, device: torch.device) -> int:
    count = torch.tensor(calls, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    return int(count.item())
