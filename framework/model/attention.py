"""Attention for packed rows: each example attends only within itself, at the cost of
attending over that example alone, never a dense mask over the whole row.

`document_sdpa` is registered with transformers' attention interface, so any model that
dispatches through it (Llama, Qwen2, Mistral, ...) can use it: rows are cut where the
position ids restart and each example runs causal SDPA on its own keys. Without position
ids or with a padding mask (batched generation), it falls back to transformers' SDPA;
decoding one token against a cache, it attends per key-value head (`_decode_attention`).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from framework.data.pack import example_bounds

DOCUMENT_SDPA = "document_sdpa"
Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, positions) -> logits
# (ids, positions) -> (final hidden states [rows, length, hidden], the LM head module)
HiddenForward = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.nn.Module]]


def document_sdpa(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    position_ids: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """query [batch, heads, length, dim] -> output [batch, length, heads, dim]."""
    if query.shape[2] == 1 and key.shape[2] > 1 and query.shape[1] != key.shape[1]:
        return _decode_attention(query, key, value, attention_mask, scaling), None
    if position_ids is None or attention_mask is not None or query.shape[2] != key.shape[2]:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    # transformers' default position ids (none passed) are one row for the whole batch.
    position_ids = position_ids.expand(query.shape[0], -1)
    rows = []
    for b, starts in enumerate(example_bounds(position_ids)):
        pieces = [
            F.scaled_dot_product_attention(
                query[b : b + 1, :, start:end],
                key[b : b + 1, :, start:end],
                value[b : b + 1, :, start:end],
                dropout_p=dropout,
                scale=scaling,
                is_causal=True,
                enable_gqa=gqa,
            )
            for start, end in itertools.pairwise(starts)
        ]
        rows.append(torch.cat(pieces, dim=2))
    return torch.cat(rows, dim=0).transpose(1, 2).contiguous(), None


def _decode_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """One new token's attention with grouped key-value heads: the query heads that share a
    key-value head are that head's queries, so its keys and values are read once. SDPA
    with the keys repeated per query head (transformers' way on CPU) reads them once per
    query head: at 800 cached tokens that made attention 57% of a decoding step."""
    batch, heads, _, dim = query.shape
    kv_heads = key.shape[1]
    # Query head h uses key-value head h // group, as transformers' repeat_kv orders them.
    grouped = query.view(batch, kv_heads, heads // kv_heads, dim)
    mask = attention_mask[:, :, :1] if attention_mask is not None else None
    out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=mask, scale=scaling)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous()


def _document_mask(*args, attention_mask: torch.Tensor | None = None, **kwargs):
    # No mask at all for packed training rows; the real one when padding must be masked.
    if attention_mask is None:
        return None
    return sdpa_mask(*args, attention_mask=attention_mask, **kwargs)


AttentionInterface.register(DOCUMENT_SDPA, document_sdpa)
AttentionMaskInterface.register(DOCUMENT_SDPA, _document_mask)


def choose_attention(requested: str, device: torch.device) -> str:
    """`auto`: flash-attn's varlen kernel on GPUs that have it installed, else per-document
    SDPA. Anything else is taken as asked."""
    if requested != "auto":
        return requested
    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return DOCUMENT_SDPA


def packed_logits(model: torch.nn.Module) -> Forward:
    """(input ids, position ids) -> logits of packed rows, through `model` (a DeepSpeed
    engine or a plain model). No cache: with one, transformers lets packed examples
    attend to each other."""
    return lambda ids, positions: (
        model(input_ids=ids, position_ids=positions, use_cache=False).logits
    )


def packed_hidden_states(model: torch.nn.Module) -> HiddenForward:
    """(input ids, position ids) -> (the decoder's final hidden states, the LM head) of
    packed rows, through `model`'s own forward (ZeRO-3's hooks on the whole model run as
    usual), with the head applied to the last position only: the caller applies it where
    it needs logits."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine's model
    decoder, head = inner.get_decoder(), inner.get_output_embeddings()

    def forward(ids: torch.Tensor, positions: torch.Tensor):
        captured = []
        hook = decoder.register_forward_hook(lambda m, a, out: captured.append(out))
        try:
            model(input_ids=ids, position_ids=positions, use_cache=False, logits_to_keep=1)
        finally:
            hook.remove()
        return captured[0].last_hidden_state, head

    return forward
