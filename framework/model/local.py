"""A saved model directory (a run's hf/ export, or any save_pretrained directory) loaded
for inference: local files only, safetensors only, no remote code unless asked, on the
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

from framework.config.schema import ConfigError
from framework.data.templates import apply_template_choice
from framework.model.build import TORCH_DTYPES


def load_local_model(
    model: str, *, device: str, dtype: str, trust_remote_code: bool
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model (in eval mode, on `device` and `dtype`, "auto" allowed) and its tokenizer,
    from local files only, with a chat template (ChatML when the tokenizer has none, as in
    training)."""
    path = _model_dir(model)
    where = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, local_files_only=True, trust_remote_code=trust_remote_code
        )
        loaded = AutoModelForCausalLM.from_pretrained(
            path,
            dtype=_dtype(dtype, where),
            device_map=str(where),
            use_safetensors=True,
            local_files_only=True,
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as err:
        reason = " ".join(str(err).split())  # one line, as every user error is
        raise ConfigError(
            f"model={model}: could not be loaded ({reason}); models that ship their own "
            "code need trust_remote_code=true"
        ) from None
    apply_template_choice(tokenizer, None)
    return loaded.eval(), tokenizer


def _model_dir(model: str) -> Path:
    path = Path(model).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"model={model}: no such directory {path.resolve()}; give a directory written "
            "by save_pretrained, such as a training run's hf/ (outputs/<run.name>/hf)"
        )
    if not any(path.glob("*.safetensors")):
        raise ConfigError(
            f"model={model}: no such directory with weights: {path.resolve()} holds no "
            "*.safetensors files; give a training run's hf/ export"
        )
    return path


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name}: no CUDA device here; use device=auto or cpu")
    return device


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return TORCH_DTYPES[name]
    # bf16 on a CPU (or an old GPU) without bf16 units is many times slower than fp32.
    bf16_capable = device.type == "cuda" and torch.cuda.is_bf16_supported()
    return torch.bfloat16 if bf16_capable else torch.float32
