from types import SimpleNamespace

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from framework.train.metrics import (
    ModelShape,
    peak_flops,
    peak_memory_gb,
    peak_tflops,
    summarize,
)


def _rank(tokens, slots, step, **extra):
    record = {
        "tokens": tokens,
        "trained_tokens": tokens / 2,
        "slots": slots,
        "sum_sq_lengths": 10 * tokens,
        "data_wait_s": 0.1,
        "compute_s": step - 0.3,
        "optimizer_s": 0.2,
        "step_time_s": step,
        "peak_memory_gb": 1.0,
    }
    return record | extra


def test_throughput_counts_real_tokens_over_the_slowest_rank():
    ranks = [_rank(900, 1000, 2.0), _rank(700, 1000, 1.6, peak_memory_gb=3.0)]
    m = summarize(ranks, None, None)
    assert m["tokens_per_s"] == pytest.approx(1600 / 2.0)
    assert m["trained_tokens_per_s"] == pytest.approx(800 / 2.0)
    assert m["tokens_per_s_per_worker"] == pytest.approx(400)
    assert m["packing_efficiency"] == pytest.approx(0.8)
    assert m["step_time_skew"] == pytest.approx(2.0 / 1.6)
    assert m["peak_memory_gb"] == 3.0
    assert "mfu" not in m


def test_mfu_uses_model_and_attention_flops_against_the_peak():
    shape = ModelShape(params=1000, layers=2, hidden=8)
    m = summarize([_rank(100, 100, 1.0)], shape, peak=1e7)
    expected = (6 * 1000 * 100 + 6 * 2 * 8 * 1000) / 1.0 / 1e7
    assert m["mfu"] == pytest.approx(expected)


def test_cpu_has_no_peak_unless_configured_and_memory_is_measured():
    assert peak_flops(torch.device("cpu"), None) is None
    assert peak_flops(torch.device("cpu"), 2.0) == 2e12
    assert peak_memory_gb(torch.device("cpu")) > 0.01


def test_frozen_weights_cost_four_flops_per_token_not_six():
    shape = ModelShape(params=10, layers=2, hidden=8, frozen=1000)
    assert shape.train_flops(100, 0) == (6 * 10 + 4 * 1000) * 100


def _llama(tied: bool) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, tie_word_embeddings=tied,
    )  # fmt: skip
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("tied", [True, False])
def test_counted_weights_are_the_products_trained_or_frozen(tied):
    model = _llama(tied)
    total = sum(p.numel() for p in model.parameters())
    lookup = 0 if tied else model.get_input_embeddings().weight.numel()
    full = ModelShape.of(model)
    # The input embedding is a lookup: counted only as the tied output layer.
    assert (full.params, full.frozen) == (total - lookup, 0)
    assert (full.layers, full.hidden) == (2, 4 * 8)  # attention width: heads x head_dim
    lora = ModelShape.of(get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"])))
    adapters = 2 * 2 * (16 + 4 * 8)  # r x (in + out) per layer's q_proj
    assert (lora.params, lora.frozen) == (adapters, total - lookup)


def test_a_packed_4bit_weight_counts_as_its_real_shape():
    model = _llama(True)
    weight = model.model.layers[0].mlp.up_proj.weight  # 32 x 16
    before = ModelShape.of(model).params
    weight.data = torch.zeros(32 * 16 // 4, 1, dtype=torch.bfloat16)  # bnb's packed storage
    weight.quant_state = SimpleNamespace(shape=torch.Size([32, 16]))
    assert ModelShape.of(model).params == before


@pytest.mark.parametrize(
    ("name", "precision", "tf32", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", "bf16", False, 989.0),  # SXM
        ("NVIDIA H100 PCIe", "bf16", False, 756.0),
        ("NVIDIA H200", "bf16", False, 989.0),
        ("NVIDIA A100-SXM4-80GB", "bf16", True, 312.0),
        ("NVIDIA A100-SXM4-80GB", "fp32", True, 156.0),
        ("NVIDIA A100-SXM4-80GB", "fp32", False, 19.5),  # torch's default: no TF32
        ("NVIDIA H100 80GB HBM3", "fp32", False, 66.9),
        ("NVIDIA L40S", "bf16", False, 362.0),
        ("NVIDIA L4", "bf16", False, 121.0),
        ("NVIDIA GeForce RTX 4090", "bf16", False, None),
    ],
)
def test_peak_is_the_gpu_dense_peak_for_the_run_precision(name, precision, tf32, tflops):
    assert peak_tflops(name, precision, tf32) == tflops
