"""Causal LMs: a pretrained one (named any way framework/hf/resolve.py accepts), or a
small Llama built from config."""

from __future__ import annotations

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from framework.config.checks import check_split_heads
from framework.config.schema import MODEL_FORMS, ConfigError, ModelConfig, TrainConfig
from framework.model import attention as _registers_document_sdpa  # noqa: F401
from framework.model.adapters import check_adapter

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_model_source(cfg: TrainConfig, source: str | None) -> None:
    """Fail early, on the driver, when `model.name_or_path` cannot be loaded from `source`,
    what it resolved to (framework/hf/resolve.py's model_source); None: the model built
    from config, nothing to check."""
    if source is None:
        return
    try:
        config = AutoConfig.from_pretrained(source, trust_remote_code=cfg.model.trust_remote_code)
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())
        raise ConfigError(
            f"model.name_or_path={cfg.model.name_or_path!r} could not be loaded ({reason}). "
            f"Give {MODEL_FORMS}; check the network or HF_HOME cache for a hub id, and "
            "model.trust_remote_code for custom code"
        ) from None
    check_adapter(cfg, config)
    _check_plain_head(cfg, config)
    if (size := cfg.parallelism.sequence_parallel) > 1:
        text = config.get_text_config()
        check_split_heads(text.num_attention_heads, text.num_key_value_heads, size)


# Config fields of models whose forward changes the logits after the LM head (Gemma 2's
# soft-capping, Cohere's and Granite's scaling), which the trained-positions loss, applying
# the head itself, would leave out.
_LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


def _check_plain_head(cfg: TrainConfig, config: PreTrainedConfig) -> None:
    text = config.get_text_config()
    changed = [name for name in _LOGIT_TRANSFORMS if getattr(text, name, None) is not None]
    if changed and cfg.loss.positions == "trained":
        raise ConfigError(
            f"model.name_or_path={cfg.model.name_or_path!r} changes its logits after the LM "
            f"head ({', '.join(changed)}), which loss.positions=trained does not "
            "apply: set loss.positions=all"
        )


def build_model(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    attention: str = "document_sdpa",
    source: str | None = None,
    quantization=None,
) -> PreTrainedModel:
    """The pretrained weights at `source` (a resolved model: framework/hf/resolve.py),
    else a random-init Llama from `cfg` (seed the RNG first); with `attention` as the
    attention implementation, quantized as `quantization` (a transformers quantization
    config: QLoRA's) asks. Under ZeRO-3 (a live transformers HfDeepSpeedConfig) both are
    built already partitioned, except a quantized model: whole on every rank until
    deepspeed.initialize partitions it (model/adapters.py: qlora_zero3_note)."""
    if source is not None:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            dtype=dtype,
            attn_implementation=attention,
            trust_remote_code=cfg.trust_remote_code,
            quantization_config=quantization,
        )
    else:
        model = AutoModelForCausalLM.from_config(
            model_config(cfg, tokenizer, attention), dtype=dtype
        )
    return model


def model_config(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    attention: str = "document_sdpa",
    source: str | None = None,
) -> PreTrainedConfig:
    """The architecture `build_model` builds, without reading any weights: the pretrained
    model's config.json (at `source`), or the tiny Llama's."""
    if source is None:
        return _tiny_llama(cfg, tokenizer, attention)
    return AutoConfig.from_pretrained(
        source, trust_remote_code=cfg.trust_remote_code, attn_implementation=attention
    )


def generation_config(source: str | None, config: PreTrainedConfig) -> GenerationConfig:
    """The pretrained model's generation defaults (sampling settings, stop tokens) where
    it ships them, else those derived from `config`."""
    if source is not None:
        try:
            return GenerationConfig.from_pretrained(source)
        except OSError:
            pass  # the model ships none: derive them, as from_pretrained does
    return GenerationConfig.from_model_config(config)


def _tiny_llama(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, attention: str
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_kv_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
        use_cache=False,
        attn_implementation=attention,
    )
