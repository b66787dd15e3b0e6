"""Attention for packed rows: each example attends only within itself, at the cost of
attending over that example alone, never a dense mask over the whole row.

Which kernel does it (`choose_attention`, a plain function of the device's facts):
- `flash_attention_2` on GPUs with flash-attn installed, in bf16: flash-attn's varlen
  kernel, one call per layer for every document of the micro batch. transformers finds
  packed documents from position ids only in a batch of one row, so the document bounds of
  any micro batch are handed to it (`packed_attention_kwargs`: cu_seqlens over the
  flattened rows, computed once per forward).
- `flex_attention` on other GPUs (fp32, or no flash-attn): transformers builds one
  document block mask per forward from the position ids; PyTorch's compiled FlexAttention
  kernel skips the masked blocks, one call per layer.
- `document_sdpa` on CPU, where FlexAttention has no backward and nested tensors no SDPA
  kernel: causal SDPA per document, each on its own keys (benchmarks/attention.py).

`document_sdpa` is registered with transformers' attention interface, so any model that
dispatches through it (Llama, Qwen2, Mistral, ...) can use it. The document bounds come
from the forward's keyword arguments (read once on the host per forward), else from the
position ids. Without position ids or with a padding mask (batched generation), it falls
back to transformers' SDPA; decoding one token against a cache, it attends per key-value
head (`_decode_attention`).
"""

from __future__ import annotations

import importlib.util
import itertools
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import sdpa_mask

from framework.config.schema import ConfigError
from framework.data.pack import example_bounds
from framework.model.sequence_parallel import SEQUENCE_PARALLEL, sequence_parallel

DOCUMENT_SDPA = "document_sdpa"
FLASH_ATTENTION = "flash_attention_2"
FLEX_ATTENTION = "flex_attention"
# The keyword argument that carries each row's document starts to document_sdpa.
DOCUMENT_BOUNDS = "document_bounds"
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
    bounds = kwargs.get(DOCUMENT_BOUNDS)
    if bounds is None:  # a forward not given them: read from the device in every layer
        # transformers' default position ids (none passed) are one row for the whole batch.
        bounds = example_bounds(position_ids.expand(query.shape[0], -1))
    rows = []
    for b, starts in enumerate(bounds):
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


def choose_attention(
    requested: str, *, device_type: str, precision: str, flash_attn: bool | None = None
) -> tuple[str, str]:
    """(the attention implementation, why) for `model.attention` on a device of
    `device_type` training in `precision`; `flash_attn`: whether flash-attn is installed
    (looked up when None)."""
    if flash_attn is None:
        flash_attn = importlib.util.find_spec("flash_attn") is not None
    if requested == FLASH_ATTENTION and precision == "fp32":
        raise ConfigError(
            "model.attention=flash_attention_2 takes bf16 or fp16 inputs, and this run trains "
            "in fp32: set trainer.precision=bf16, or model.attention=auto"
        )
    if requested != "auto":
        return requested, "model.attention"
    if device_type != "cuda":
        return DOCUMENT_SDPA, (
            "SDPA per document: on CPU FlexAttention has no backward and nested tensors no "
            "SDPA kernel"
        )
    if flash_attn and precision != "fp32":
        return FLASH_ATTENTION, "flash-attn's varlen kernel, one call per layer"
    why = "flash-attn takes no fp32" if flash_attn else "flash-attn is not installed"
    return FLEX_ATTENTION, f"FlexAttention with a document block mask ({why})"


def document_offsets(position_ids: torch.Tensor) -> np.ndarray:
    """Where each document of a micro batch starts in its rows laid end to end, then their
    total length: flash-attn's cu_seqlens. Position ids restart at 0 at every document and
    every row starts one (padding is a document of its own), so no document spans two
    rows."""
    flat = position_ids.reshape(-1).cpu().numpy()
    return np.append(np.flatnonzero(flat == 0), len(flat))


def packed_attention_kwargs(position_ids: torch.Tensor, implementation: str) -> dict:
    """What a forward over packed rows passes on to `implementation`, so that its documents
    stay apart, read from the position ids once per forward (one device-to-host copy)
    rather than in every layer. transformers' own sdpa, eager and flex_attention build
    their document mask from the position ids themselves."""
    if implementation == DOCUMENT_SDPA:
        return {DOCUMENT_BOUNDS: example_bounds(position_ids.cpu())}
    if implementation != FLASH_ATTENTION:
        return {}
    offsets = document_offsets(position_ids)
    longest = int(np.diff(offsets).max())
    cu_seqlens = torch.from_numpy(offsets).to(torch.int32).to(position_ids.device)
    return {
        "cu_seq_lens_q": cu_seqlens,
        "cu_seq_lens_k": cu_seqlens,
        "max_length_q": longest,
        "max_length_k": longest,
    }


def packed_logits(model: torch.nn.Module) -> Forward:
    """(input ids, position ids) -> logits of packed rows, through `model` (a DeepSpeed
    engine or a plain model; one splitting its rows: this worker's slice of them). No
    cache: with one, transformers lets packed examples attend to each other."""
    implementation = _implementation(model)
    return lambda ids, positions: (
        model(use_cache=False, **_packed_inputs(model, ids, positions, implementation)).logits
    )


def packed_hidden_states(model: torch.nn.Module) -> HiddenForward:
    """(input ids, position ids) -> (the decoder's final hidden states, the LM head) of
    packed rows (a model splitting its rows: this worker's slice of them), through
    `model`'s own forward (ZeRO-3's hooks on the whole model run as usual), with the head
    applied to the last position only: the caller applies it where it needs logits."""
    inner = getattr(model, "module", model)  # a DeepSpeed engine's model
    decoder, head = inner.get_decoder(), inner.get_output_embeddings()
    implementation = _implementation(model)

    def forward(ids: torch.Tensor, positions: torch.Tensor):
        captured = []
        hook = decoder.register_forward_hook(lambda m, a, out: captured.append(out))
        try:
            model(
                use_cache=False,
                logits_to_keep=1,
                **_packed_inputs(model, ids, positions, implementation),
            )
        finally:
            hook.remove()
        return captured[0].last_hidden_state, head

    return forward


def _packed_inputs(model, ids: torch.Tensor, positions: torch.Tensor, implementation: str) -> dict:
    """The forward's inputs for packed rows: the tokens, their positions and what keeps the
    documents apart; under sequence parallelism, this worker's slice of the tokens, and the
    documents found in the whole rows."""
    sp = sequence_parallel(model)
    if sp is None:
        kwargs = packed_attention_kwargs(positions, implementation)
        return {"input_ids": ids, "position_ids": positions, **kwargs}
    positions = sp.padded_positions(positions)
    kwargs = packed_attention_kwargs(positions, implementation)
    ids, positions = sp.tokens(ids, positions)
    return {"input_ids": ids, "position_ids": positions, SEQUENCE_PARALLEL: sp, **kwargs}


def _implementation(model: torch.nn.Module) -> str:
    inner = getattr(model, "module", model)  # a DeepSpeed engine's model
    return inner.config._attn_implementation
