"""Causal LMs: a pretrained one by hub id or path, or a small Llama built from config."""

from __future__ import annotations

from pathlib import Path

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

from framework.config.schema import ConfigError, ModelConfig
from framework.model import attention as _registers_document_sdpa  # noqa: F401

TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def check_model_source(cfg: ModelConfig) -> None:
    """Fail early, on the driver, when `model.name_or_path` cannot be loaded."""
    if cfg.name_or_path is None:
        return
    looks_local = (
        cfg.name_or_path.startswith(("/", "./", "../", "~")) or Path(cfg.name_or_path).exists()
    )
    if looks_local and not Path(cfg.name_or_path).expanduser().is_dir():
        raise ConfigError(
            f"model.name_or_path: no such directory {cfg.name_or_path}; give a model "
            "directory saved with save_pretrained, a hub id such as Qwen/Qwen2.5-7B-Instruct, "
            "or model.name_or_path=null for the built-in tiny model"
        )
    try:
        AutoConfig.from_pretrained(cfg.name_or_path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"model.name_or_path={cfg.name_or_path!r} could not be loaded ({err}). Check the "
            "id, the network or HF_HOME cache, and model.trust_remote_code for custom code"
        ) from None


def build_model(
    cfg: ModelConfig,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    attention: str = "document_sdpa",
) -> PreTrainedModel:
    """Random-init Llama when no name_or_path is given (seed the RNG first), else the
    pretrained weights; with `attention` as the attention implementation. Under ZeRO-3
    (a live transformers HfDeepSpeedConfig) both are built already partitioned."""
    if cfg.name_or_path is not None:
        model = AutoModelForCausalLM.from_pretrained(
            cfg.name_or_path,
            dtype=dtype,
            attn_implementation=attention,
            trust_remote_code=cfg.trust_remote_code,
        )
    else:
        model = AutoModelForCausalLM.from_config(
            model_config(cfg, tokenizer, attention), dtype=dtype
        )
    return model


def model_config(
    cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase, attention: str = "document_sdpa"
) -> PreTrainedConfig:
    """The architecture `build_model` builds, without reading any weights: the pretrained
    model's config.json (from its directory or the hub cache), or the tiny Llama's."""
    if cfg.name_or_path is None:
        return _tiny_llama(cfg, tokenizer, attention)
    return AutoConfig.from_pretrained(
        cfg.name_or_path, trust_remote_code=cfg.trust_remote_code, attn_implementation=attention
    )


def generation_config(cfg: ModelConfig, config: PreTrainedConfig) -> GenerationConfig:
    """The pretrained model's generation defaults (sampling settings, stop tokens) where
    it ships them, else those derived from `config`."""
    if cfg.name_or_path is not None:
        try:
            return GenerationConfig.from_pretrained(cfg.name_or_path)
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
