import numpy as np
import pytest
import torch

from framework.data.pack import collate_rows
from framework.model.attention import DOCUMENT_SDPA, choose_attention
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
    for name in (DOCUMENT_SDPA, "sdpa", "eager"):
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


def test_each_packed_example_sees_only_itself(models, tokenizer):
    data = synthetic_data(len(tokenizer))
    packed = collate_rows(data.tokens, data.weights, data.offsets, [np.array([0, 1])], None, 0)
    alone = collate_rows(data.tokens, data.weights, data.offsets, [np.array([1])], None, 0)
    first = len(data.example(0)[0])
    torch.testing.assert_close(
        _logits(models[DOCUMENT_SDPA], packed)[0, first:],
        _logits(models[DOCUMENT_SDPA], alone)[0],
        atol=1e-5,
        rtol=1e-5,
    )


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


def test_automatic_choice_on_cpu_is_per_document_sdpa():
    assert choose_attention("auto", torch.device("cpu")) == DOCUMENT_SDPA
    assert choose_attention("sdpa", torch.device("cpu")) == "sdpa"


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
