"""The checks of the commands beside training (config/commands.py): each raises
ConfigError naming the key whose value cannot work, and the fix."""

from __future__ import annotations

from pathlib import Path

import torch

from framework.config.commands import ChatConfig, EvalConfig, ServeConfig
from framework.config.schema import ConfigError

CHAT_DTYPES = ("fp32", "bf16", "fp16")


def check_chat_config(cfg: ChatConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot work."""
    if cfg.max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens={cfg.max_new_tokens} must be > 0")
    if cfg.temperature < 0:
        raise ConfigError(f"temperature={cfg.temperature} must be >= 0 (0 is greedy decoding)")
    if not 0 < cfg.top_p <= 1:
        raise ConfigError(f"top_p={cfg.top_p} must be in (0, 1]")
    check_device_and_dtype(cfg)


def check_device_and_dtype(cfg: ChatConfig | ServeConfig) -> None:
    """Raise ConfigError for a dtype or device a model cannot be loaded on."""
    if cfg.dtype != "auto" and cfg.dtype not in CHAT_DTYPES:
        raise ConfigError(f"dtype={cfg.dtype!r} is not one of {['auto', *CHAT_DTYPES]}")
    if cfg.device != "auto":
        try:
            torch.device(cfg.device)
        except RuntimeError:
            raise ConfigError(
                f"device={cfg.device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)"
            ) from None


EVALS = ("suite", "questions", "ifeval", "lm_eval")
EVAL_PATHS = {
    "suite": "eval=suite reads no file: drop path=",
    "questions": 'give a JSONL file of {"prompt": ..., "reference": ...} lines',
    "ifeval": "give IFEval's input_data.jsonl, or no path for the hub's google/IFEval",
    "lm_eval": "give IFEval's input_data.jsonl for the ifeval task, or no path",
}
NO_EVAL_MODEL = (
    "model: give the model to evaluate, e.g. model=outputs/smollm2-sft/hf or "
    "model=outputs/smollm2-sft/checkpoints"
)


def check_eval_config(cfg: EvalConfig) -> None:
    """Raise ConfigError naming the first key that cannot work (family names: in
    commands/compose.py, where the suite is known)."""
    if cfg.eval not in EVALS:
        fix = " (a file of questions: eval=questions path=<file>)" if "." in cfg.eval else ""
        raise ConfigError(f"eval={cfg.eval!r} is not one of {list(EVALS)}{fix}")
    if cfg.model is None and cfg.eval != "questions":
        raise ConfigError(NO_EVAL_MODEL)
    if cfg.split not in ("test", "validation"):
        raise ConfigError(f"split={cfg.split!r} is not one of ['test', 'validation']")
    for key in ("per_family", "max_new_tokens", "batch_size", "limit"):
        value = getattr(cfg, key)
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise ConfigError(f"{key}={value} must be a whole number > 0")
    if cfg.eval == "questions" and cfg.path is None:
        raise ConfigError(
            'eval=questions needs path=<file.jsonl>: {"prompt": ..., "reference": ...} lines'
        )
    if cfg.eval == "suite" and cfg.path is not None:
        raise ConfigError(f"path={cfg.path}: {EVAL_PATHS['suite']} (or give eval=questions)")
    if cfg.path is not None and not Path(cfg.path).is_file():
        raise ConfigError(f"path={cfg.path}: no such file; {EVAL_PATHS[cfg.eval]}")
    if cfg.eval == "lm_eval" and not cfg.tasks:
        raise ConfigError("tasks=[] names no lm-eval task; give e.g. tasks=[ifeval]")
