import dataclasses

import pytest
import torch

from framework.config.schema import AdapterConfig, ConfigError
from framework.model.adapters import (
    adapter_differences,
    check_adapter,
    prepare_for_training,
    qlora_zero3_note,
    quantization,
    uses_adapter,
)
from framework.model.build import build_model
from tests.helpers import TINY, compose_config

LORA = AdapterConfig(method="lora")
BLOCK_LINEARS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def tiny(tokenizer, cfg=TINY, dtype=torch.float32):
    torch.manual_seed(0)
    return build_model(cfg, tokenizer, dtype)


def test_full_fine_tuning_trains_every_weight_of_the_model_it_was_given(tokenizer):
    model = tiny(tokenizer)
    prepared = prepare_for_training(model, TINY, AdapterConfig())
    assert prepared is model and not prepared.is_gradient_checkpointing
    assert all(p.requires_grad for p in prepared.parameters())


def test_gradient_checkpointing_switch(tokenizer):
    cfg = dataclasses.replace(TINY, gradient_checkpointing=True)
    for adapter in (AdapterConfig(), LORA):
        assert prepare_for_training(tiny(tokenizer, cfg), cfg, adapter).is_gradient_checkpointing


def test_lora_adapts_every_linear_layer_of_the_blocks_and_trains_only_its_matrices(tokenizer):
    """Not PEFT's q/v fallback and not the LM head; B starts at zero, so the wrapped model
    computes what the base does."""
    base = tiny(tokenizer)
    ids = torch.randint(0, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = base(input_ids=ids).logits
    model = prepare_for_training(base, TINY, LORA)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    adapted = {n.split(".")[-4] for n in trainable}
    assert adapted == BLOCK_LINEARS
    assert len(trainable) == 2 * len(BLOCK_LINEARS) * TINY.num_layers  # A and B of each
    assert not any("lm_head" in n or "embed" in n for n in trainable)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, want, rtol=0, atol=0)


def test_adapters_take_the_base_dtype_for_zero3_to_gather_one_dtype(tokenizer):
    model = prepare_for_training(tiny(tokenizer, dtype=torch.bfloat16), TINY, LORA)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


def test_dora_also_trains_a_magnitude_per_output_row(tokenizer):
    model = prepare_for_training(tiny(tokenizer), TINY, AdapterConfig(method="dora"))
    magnitudes = [p for n, p in model.named_parameters() if "magnitude" in n and p.requires_grad]
    assert len(magnitudes) == len(BLOCK_LINEARS) * TINY.num_layers


def test_target_modules_and_modules_to_save_choose_what_trains(tokenizer):
    adapter = AdapterConfig(method="lora", target_modules=["q_proj"], modules_to_save=["lm_head"])
    model = prepare_for_training(tiny(tokenizer), TINY, adapter)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert {n.split(".")[-4] for n in trainable if "lora_" in n} == {"q_proj"}
    assert any("lm_head.modules_to_save" in n for n in trainable)


@pytest.mark.parametrize("key", ["target_modules", "modules_to_save"])
def test_a_module_the_model_lacks_is_named_before_any_worker_starts(tiny_model_dir, key):
    from transformers import AutoConfig

    cfg = compose_config([f"model.name_or_path={tiny_model_dir}", "adapter=lora"])
    setattr(cfg.adapter, key, ["qkv_proj"])
    with pytest.raises(ConfigError, match=f"adapter.{key}: .*'qkv_proj'.*q_proj"):
        check_adapter(cfg, AutoConfig.from_pretrained(tiny_model_dir))


def test_adapter_groups_compose_with_their_learning_rate(tiny_model_dir):
    for method in ("lora", "dora"):
        cfg = compose_config([f"model.name_or_path={tiny_model_dir}", f"adapter={method}"])
        assert cfg.adapter.method == method and cfg.trainer.lr == 2e-3
        assert uses_adapter(cfg.adapter)
    cfg = compose_config(
        [f"model.name_or_path={tiny_model_dir}", "adapter=lora", "trainer.lr=3e-4"]
    )
    assert cfg.trainer.lr == 3e-4  # the command line wins
    assert not uses_adapter(compose_config([]).adapter)


def test_qlora_without_cuda_and_bitsandbytes_stops_with_the_alternative(tiny_model_dir):
    from transformers import AutoConfig

    cfg = compose_config([f"model.name_or_path={tiny_model_dir}", "adapter=qlora"])
    assert cfg.adapter.method == "qlora"
    with pytest.raises(ConfigError, match=r"adapter=qlora needs CUDA GPUs.*use adapter=lora"):
        check_adapter(cfg, AutoConfig.from_pretrained(tiny_model_dir))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["adapter=lora"], "model.name_or_path is null"),
        (["adapter.method=ia3"], "adapter.method='ia3' is not one of"),
        (["adapter=lora", "adapter.rank=0"], "adapter.rank=0 must be > 0"),
        (["adapter=lora", "adapter.dropout=1.0"], r"adapter.dropout=1.0 must be in \[0, 1\)"),
    ],
)
def test_bad_adapter_values_name_the_key(tiny_model_dir, overrides, message):
    model = [] if overrides == ["adapter=lora"] else [f"model.name_or_path={tiny_model_dir}"]
    with pytest.raises(ConfigError, match=message):
        compose_config([*model, *overrides])


def test_adapter_differences_name_each_changed_key():
    changed = dataclasses.replace(LORA, rank=8, target_modules=["q_proj"])
    assert adapter_differences(LORA, changed) == [
        "adapter.rank=16 -> 8",
        "adapter.target_modules=[] -> ['q_proj']",
    ]
    assert adapter_differences(LORA, LORA) == []


def test_lora_gradients_are_the_same_with_activation_recomputation(tokenizer):
    """Frozen embeddings feed the recomputed blocks: non-reentrant checkpointing still
    gives every adapter matrix its gradient (no enable_input_require_grads needed)."""
    ids = torch.randint(0, len(tokenizer), (2, 12), generator=torch.Generator().manual_seed(1))
    grads = []
    for checkpointing in (False, True):
        cfg = dataclasses.replace(TINY, gradient_checkpointing=checkpointing)
        model = prepare_for_training(tiny(tokenizer, cfg), cfg, LORA).train()
        torch.manual_seed(2)  # the same dropout draws
        model(input_ids=ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        assert grads[1][name] is not None, name
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-5, atol=1e-7)
    assert all(g.abs().max() > 0 for n, g in grads[0].items() if "lora_B" in n)


def test_qlora_under_zero3_says_every_gpu_first_holds_the_whole_4bit_base():
    qlora = AdapterConfig(method="qlora")
    assert "every GPU first holds the whole 4-bit base" in qlora_zero3_note(qlora, zero3=True)
    assert qlora_zero3_note(qlora, zero3=False) is None
    assert qlora_zero3_note(LORA, zero3=True) is None
    # Stored in the compute dtype, the 4-bit weights are tensors DeepSpeed can partition.
    for dtype in (torch.bfloat16, torch.float32):
        config = quantization(qlora, dtype)
        assert config.bnb_4bit_quant_storage == config.bnb_4bit_compute_dtype == dtype
    assert quantization(LORA, torch.float32) is None
