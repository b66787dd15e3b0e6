"""The model presets of conf/model/ read as plain YAML (no Hydra), so that a preset's name
works wherever a model is named: `model=smollm2_135m` in chat, eval and export too."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
NO_WEIGHTS = object()  # a preset that builds its model from config (tiny_llama)


def preset_model(name: str) -> str | object | None:
    """The `model.name_or_path` preset `name` sets; NO_WEIGHTS for a preset without one;
    None when there is no such preset."""
    file = CONF_DIR / "model" / f"{name}.yaml"
    if "/" in name or not file.is_file():
        return None
    path = OmegaConf.select(OmegaConf.load(file), "model.name_or_path")
    return NO_WEIGHTS if path is None else str(path)
