"""A model loaded for inference (chat, eval; serve finds its weights here): named any way
framework/hf/resolve.py accepts, safetensors only, no remote code unless asked, on the
device and dtype asked for ("auto" allowed), with a chat template."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from framework.config.commands import ChatConfig, EvalConfig
from framework.config.schema import ConfigError
from framework.data.templates import apply_template_choice
from framework.hf.resolve import resolve_model
from framework.model.attention import DOCUMENT_SDPA
from framework.model.build import TORCH_DTYPES
from framework.model.precision import auto_precision


def load_for_inference(
    cfg: ChatConfig | EvalConfig,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model cfg.model names (any form framework/hf/resolve.py accepts), in eval
    mode on cfg.device and cfg.dtype ("auto" allowed), and its tokenizer with a chat
    template (ChatML when it has none, as in training). Safetensors weights only."""
    model, trust_remote_code = cfg.model, cfg.trust_remote_code
    path = local_weights(model, cfg.cache_dir)
    where = resolve_device(cfg.device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        loaded = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=inference_dtype(cfg.dtype, where),
            device_map=str(where),
            use_safetensors=True,
            trust_remote_code=trust_remote_code,
            # Its decoding path reads grouped keys and values once (model/attention.py).
            attn_implementation=DOCUMENT_SDPA,
        )
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())  # one line, as every user error is
        raise ConfigError(
            f"model={model}: could not be loaded ({reason}); models that ship their own "
            "code need trust_remote_code=true"
        ) from None
    apply_template_choice(tokenizer, None)
    return loaded.eval(), tokenizer


def local_weights(model: str, cache_dir: str) -> str:
    """The local path `model` resolves to (framework/hf/resolve.py): ConfigError for a
    directory without safetensors weights, the only ones loaded."""
    path = resolve_model(model, cache_dir)
    if Path(path).is_dir() and not any(Path(path).glob("*.safetensors")):
        raise ConfigError(
            f"model={model}: {path} holds no *.safetensors weights (only safetensors are "
            "loaded); give a training run's hf/ export"
        )
    return path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device here; use device=auto or cpu")
    return device


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype `name` asks for on `device`; auto: bf16 where it is fast, else fp32."""
    if name != "auto":
        return TORCH_DTYPES[name]
    return TORCH_DTYPES[auto_precision(device)[0]]
