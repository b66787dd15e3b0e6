import itertools

import numpy as np
import pytest
import torch

from framework.config.schema import ConfigError
from framework.data.pack import collate_rows
from framework.model.attention import (
    DOCUMENT_SDPA,
    FLASH_ATTENTION,
    FLEX_ATTENTION,
    choose_attention,
    packed_attention_kwargs,
    packed_logits,
)
from framework.model.build import build_model
from tests.helpers import TINY, synthetic_data


def _logits(model, batch, **extra):
    with torch.no_grad():
        return model(
            input_ids=batch["input_ids"],
            position_ids=batch["position_ids"],
            use_cache=False,
            **extra,
        ).logits


@pytest.fixture(scope="module")
def models(tokenizer):
    built = {}
    for name in (DOCUMENT_SDPA, "sdpa", "eager", FLEX_ATTENTION):
        torch.manual_seed(0)
        built[name] = build_model(TINY, tokenizer, torch.float32, attention=name).eval()
    return built


def test_document_attention_equals_the_dense_block_mask_and_eager(models, tokenizer):
    data = synthetic_data(len(tokenizer))
    rows = [np.array([0, 1, 2]), np.array([3, 4])]
    batch = collate_rows(data.tokens, data.weights, data.offsets, rows, 128, 0)
    ours = _logits(models[DOCUMENT_SDPA], batch)
    torch.testing.assert_close(ours, _logits(models["sdpa"], batch), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours, _logits(models["eager"], batch), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", [DOCUMENT_SDPA, "sdpa", "eager", FLEX_ATTENTION])
def test_each_packed_example_sees_only_itself(models, tokenizer, name):
    """Every implementation that runs on CPU (FlexAttention forward only: it has no CPU
    backward), through the forward training uses, on a micro batch of two rows: each
    example's logits packed equal its logits alone."""
    data = synthetic_data(len(tokenizer))
    rows = [np.array([0, 1]), np.array([2, 3, 4])]
    packed = collate_rows(data.tokens, data.weights, data.offsets, rows, 80, 0)
    with torch.no_grad():
        logits = packed_logits(models[name])(packed["input_ids"], packed["position_ids"])
    for r, row in enumerate(rows):
        cursor = 0
        for example in row:
            alone = collate_rows(
                data.tokens, data.weights, data.offsets, [np.array([example])], None, 0
            )
            end = cursor + alone["input_ids"].shape[1]
            torch.testing.assert_close(
                logits[r, cursor:end], _logits(models[name], alone)[0], atol=1e-5, rtol=1e-5
            )
            cursor = end


def test_a_batch_without_position_ids_is_one_example_per_row(models):
    ids = torch.randint(3, 100, (3, 17))
    with torch.no_grad():
        ours = models[DOCUMENT_SDPA](input_ids=ids, use_cache=False).logits
        reference = models["sdpa"](input_ids=ids, use_cache=False).logits
    assert ours.shape == reference.shape == (3, 17, reference.shape[-1])
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-5)


def test_padded_generation_matches_transformers_sdpa(models, tokenizer):
    tokenizer.padding_side = "left"
    prompts = ["Reverse the word apple.", "What is 2 + 3? Answer now"]
    inputs = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    outputs = [
        models[name].generate(**inputs, max_new_tokens=6, do_sample=False, use_cache=True)
        for name in (DOCUMENT_SDPA, "sdpa")
    ]
    assert outputs[0].tolist() == outputs[1].tolist()


@pytest.mark.parametrize(
    ("device_type", "precision", "flash_attn", "chosen"),
    [
        ("cpu", "fp32", True, DOCUMENT_SDPA),
        ("cpu", "bf16", False, DOCUMENT_SDPA),
        ("cuda", "bf16", True, FLASH_ATTENTION),
        ("cuda", "bf16", False, FLEX_ATTENTION),
        ("cuda", "fp32", True, FLEX_ATTENTION),  # flash-attn refuses fp32 inputs
    ],
)
def test_auto_picks_the_kernel_per_device_and_says_why(device_type, precision, flash_attn, chosen):
    name, why = choose_attention(
        "auto", device_type=device_type, precision=precision, flash_attn=flash_attn
    )
    assert name == chosen and why
    asked = choose_attention("sdpa", device_type=device_type, precision=precision)
    assert asked == ("sdpa", "model.attention")


def test_flash_attention_in_fp32_is_refused_naming_the_keys():
    with pytest.raises(ConfigError, match=r"trainer\.precision=bf16"):
        choose_attention("flash_attention_2", device_type="cuda", precision="fp32")


@pytest.mark.parametrize("rows", [[[0, 1, 2], [3, 4]], [[0], [1], [2], [3]], [[0, 1, 2, 3, 4]]])
def test_flash_varlen_gets_every_documents_bounds_whatever_the_micro_batch(tokenizer, rows):
    """transformers runs flash-attn over documents only when handed cu_seqlens for a batch
    of several rows: they must be each document's start in the rows laid end to end (the
    padding a document of its own), whatever the number and width of the rows."""
    data = synthetic_data(len(tokenizer))
    length = [len(data.example(e)[0]) for e in range(5)]
    width = max(sum(length[e] for e in row) for row in rows) + 3
    batch = collate_rows(
        data.tokens, data.weights, data.offsets, [np.array(r) for r in rows], width, 0
    )
    kwargs = packed_attention_kwargs(batch["position_ids"], FLASH_ATTENTION)
    expected = []
    for r, row in enumerate(rows):
        cursor = r * width
        for example in row:
            expected.append(cursor)
            cursor += length[example]
        expected.append(cursor)  # the row's padding
    cu_seqlens = kwargs["cu_seq_lens_q"].tolist()
    assert cu_seqlens == [*expected, len(rows) * width]
    assert kwargs["cu_seq_lens_k"] is kwargs["cu_seq_lens_q"]
    assert kwargs["cu_seq_lens_q"].dtype == torch.int32
    assert kwargs["max_length_q"] == kwargs["max_length_k"] == max(np.diff(cu_seqlens))


def test_decoding_against_a_cache_equals_sdpa_with_repeated_keys(models):
    """One new token, 4 query heads over 2 key-value heads, the first row left-padded:
    per key-value head attention equals transformers' SDPA, which repeats the keys."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from framework.model.attention import document_sdpa

    torch.manual_seed(0)
    query, key, value = torch.randn(2, 4, 1, 16), torch.randn(2, 2, 9, 16), torch.randn(2, 2, 9, 16)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool)
    mask[0, ..., :3] = False
    module = models["sdpa"].model.layers[0].self_attn
    ours, _ = document_sdpa(module, query, key, value, mask, scaling=0.3)
    reference, _ = sdpa_attention_forward(module, query, key, value, mask, scaling=0.3)
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-6)
    unmasked, _ = document_sdpa(module, query, key, value, None, scaling=0.3)
    assert not torch.allclose(unmasked[0], ours[0])  # the padding mask was applied


def _flash_stand_in(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **_):
    """flash_attn_func's contract ([batch, length, heads, dim], grouped key-value heads),
    on CPU: causal over each whole row."""
    out = torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(1, 2) for x in (q, k, v)),
        is_causal=causal,
        scale=softmax_scale,
        enable_gqa=True,
    )
    return out.transpose(1, 2)


def _flash_varlen_stand_in(
    q,
    k,
    v,
    cu_seqlens_q,
    cu_seqlens_k,
    max_seqlen_q,
    max_seqlen_k,
    dropout_p=0.0,
    softmax_scale=None,
    causal=False,
    **_,
):
    """flash_attn_varlen_func's contract ([tokens, heads, dim], documents cut at
    cu_seqlens), on CPU."""
    cuts = cu_seqlens_q.tolist()
    return torch.cat(
        [
            _flash_stand_in(q[None, a:b], k[None, a:b], v[None, a:b], 0.0, softmax_scale, causal)[0]
            for a, b in itertools.pairwise(cuts)
        ]
    )


def test_transformers_flash_path_keeps_documents_apart_only_with_our_bounds(
    models, tokenizer, monkeypatch
):
    """transformers' flash_attention_2 path on a 2-row micro batch, flash-attn's kernels
    stood in for on CPU by SDPA with their contracts: with the cu_seqlens we hand it, each
    example's logits packed equal its logits alone; without them (what transformers does
    alone for a batch of several rows) the examples of a row attend to each other."""
    from transformers import modeling_flash_attention_utils as fa_utils

    kernels = (_flash_stand_in, _flash_varlen_stand_in, None, None, None)
    processing = (fa_utils._lazy_define_process_function(_flash_varlen_stand_in), dict)
    monkeypatch.setattr(
        fa_utils, "lazy_import_flash_attention", lambda *a, **k: (kernels, processing)
    )
    model = models["sdpa"]
    monkeypatch.setattr(model.config, "_attn_implementation", FLASH_ATTENTION)
    data = synthetic_data(len(tokenizer))
    rows = [np.array([0, 1]), np.array([2, 3, 4])]
    packed = collate_rows(data.tokens, data.weights, data.offsets, rows, 80, 0)
    with torch.no_grad():
        ours = packed_logits(model)(packed["input_ids"], packed["position_ids"])
        alone_in_rows = _logits(model, packed)
    first = len(data.example(0)[0])
    second = collate_rows(data.tokens, data.weights, data.offsets, [np.array([1])], None, 0)
    expected = _logits(models["sdpa"], second)[0]
    end = first + expected.shape[0]
    torch.testing.assert_close(ours[0, first:end], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone_in_rows[0, first:end], expected, atol=1e-3)


def test_document_bounds_are_read_once_per_forward_not_in_every_layer(
    models, tokenizer, monkeypatch
):
    """Each read of the position ids is a device-to-host sync on a GPU: training's forward
    reads them once and hands them to every layer."""
    from framework.model import attention

    reads = []
    counted = attention.example_bounds
    monkeypatch.setattr(attention, "example_bounds", lambda p: reads.append(1) or counted(p))
    data = synthetic_data(len(tokenizer))
    rows = [np.array([0, 1]), np.array([2, 3, 4])]
    packed = collate_rows(data.tokens, data.weights, data.offsets, rows, 80, 0)
    with torch.no_grad():
        packed_logits(models[DOCUMENT_SDPA])(packed["input_ids"], packed["position_ids"])
        assert len(reads) == 1 and TINY.num_layers > 1
        _logits(models[DOCUMENT_SDPA], packed)  # a forward given no bounds reads them per layer
    assert len(reads) == 1 + TINY.num_layers
