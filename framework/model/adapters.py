"""Where the model is wrapped for training, after it is built and before DeepSpeed's
engine takes it: adapters (LoRA, DoRA, QLoRA) through peft, since they decide which
weights train and must be in place before the optimizer sees the parameters. Full
fine-tuning (adapter.method=none) wraps nothing."""

from __future__ import annotations

import dataclasses
import importlib.util

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, PreTrainedConfig, PreTrainedModel

from framework.config.schema import AdapterConfig, ConfigError, ModelConfig, TrainConfig

# peft's name for every linear layer of the blocks, the output layer excepted.
ALL_LINEAR = "all-linear"


def uses_adapter(adapter: AdapterConfig) -> bool:
    return adapter.method != "none"


def prepare_for_training(
    model: PreTrainedModel, cfg: ModelConfig, adapter: AdapterConfig
) -> PreTrainedModel | PeftModel:
    """The model as the engine will train it: with activation recomputation when
    model.gradient_checkpointing (non-reentrant, so frozen inputs need no
    enable_input_require_grads), and adapters when adapter.method asks for them, their
    weights in the base's dtype (one dtype for ZeRO-3 to gather)."""
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if not uses_adapter(adapter):
        return model
    if adapter.method == "qlora":
        from peft import prepare_model_for_kbit_training
        from transformers.integrations import is_deepspeed_zero3_enabled

        note = qlora_zero3_note(adapter, zero3=is_deepspeed_zero3_enabled())
        if note and (not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0):
            print(note, flush=True)

        # Norms and the output layer to fp32 for stable training over 4-bit weights.
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=cfg.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return with_adapter(model, adapter)


def with_adapter(model: PreTrainedModel, adapter: AdapterConfig) -> PeftModel:
    """`model` with freshly initialised adapters (B = 0: the same outputs as `model`)."""
    dtype = next(model.parameters()).dtype
    try:
        wrapped = get_peft_model(model, lora_config(adapter), autocast_adapter_dtype=False)
    except ValueError as err:
        raise ConfigError(f"adapter.target_modules: {' '.join(str(err).split())}") from None
    for param in wrapped.parameters():
        if param.requires_grad and param.dtype != dtype and param.is_floating_point():
            param.data = param.data.to(dtype)
    return wrapped


def lora_config(adapter: AdapterConfig, base: str | None = None) -> LoraConfig:
    """peft's config for `adapter`; `base` is recorded as the model it adapts."""
    return LoraConfig(
        r=adapter.rank,
        lora_alpha=adapter.alpha,
        lora_dropout=adapter.dropout,
        target_modules=list(adapter.target_modules) or ALL_LINEAR,
        use_dora=adapter.method == "dora",
        use_rslora=adapter.rslora,
        modules_to_save=list(adapter.modules_to_save) or None,
        bias="none",
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )


def adapter_differences(saved: AdapterConfig, current: AdapterConfig) -> list[str]:
    """The adapter.* keys whose values differ, as `adapter.key=saved -> current`."""
    old, new = dataclasses.asdict(saved), dataclasses.asdict(current)
    return [f"adapter.{k}={old[k]} -> {new[k]}" for k in old if old[k] != new[k]]


def check_adapter(cfg: TrainConfig, config: PreTrainedConfig) -> None:
    """On the driver: QLoRA's requirements, and adapter.target_modules and
    adapter.modules_to_save against the model's module names (built on the meta device,
    no weights read)."""
    adapter = cfg.adapter
    if not uses_adapter(adapter):
        return
    if adapter.method == "qlora":
        check_qlora(cfg)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    modules = dict(model.named_modules())
    linear = {n.rsplit(".", 1)[-1] for n, m in modules.items() if isinstance(m, torch.nn.Linear)}
    named = {n.rsplit(".", 1)[-1] for n in modules if n and not n[-1].isdigit()}
    for key, choices in (("target_modules", linear), ("modules_to_save", named)):
        for wanted in getattr(adapter, key):
            if not any(n == wanted or n.endswith(f".{wanted}") for n in modules):
                raise ConfigError(
                    f"adapter.{key}: the model has no module named {wanted!r}; give some of "
                    f"{sorted(choices)} (empty target_modules: every linear layer of the "
                    "blocks)"
                )


def check_qlora(cfg: TrainConfig) -> None:
    """QLoRA quantizes with bitsandbytes, whose 4-bit kernels need CUDA."""
    problems = []
    if not cfg.cluster.use_gpu or not torch.cuda.is_available():
        problems.append("CUDA GPUs (cluster.use_gpu=true on a machine that has them)")
    if importlib.util.find_spec("bitsandbytes") is None:
        problems.append("bitsandbytes (pip install bitsandbytes)")
    if problems:
        raise ConfigError(
            f"adapter=qlora needs {' and '.join(problems)}: its 4-bit NF4 base runs on "
            "bitsandbytes' CUDA kernels. Without them use adapter=lora (the same adapters "
            "over the unquantized base)"
        )


def qlora_zero3_note(adapter: AdapterConfig, *, zero3: bool) -> str | None:
    """The start-up line for QLoRA under ZeRO-3, else None. transformers builds a quantized
    model without zero.Init (modeling_utils: `is_deepspeed_zero3_enabled() and not
    is_quantized`), so every rank loads and quantizes the whole base on its own GPU;
    deepspeed.initialize partitions it afterwards, which the 4-bit weights allow because
    they are stored in the compute dtype (quantization below)."""
    if adapter.method != "qlora" or not zero3:
        return None
    return (
        "QLoRA under ZeRO-3: every GPU first holds the whole 4-bit base (transformers "
        "quantizes without zero.Init); DeepSpeed partitions it when the engine starts"
    )


def quantization(adapter: AdapterConfig, dtype: torch.dtype):
    """QLoRA's 4-bit NF4 quantization of the base (double quantized, computing in `dtype`,
    stored as `dtype` so that ZeRO-3 can partition it); None for other methods."""
    if adapter.method != "qlora":
        return None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
    )
