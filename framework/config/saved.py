"""A run's config.yaml (in the run directory and in each checkpoint): written once
resolved, read back on today's schema. Plain OmegaConf, so workers need no Hydra."""

from __future__ import annotations

from pathlib import Path

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from framework.config.schema import ConfigError, TrainConfig
from framework.config.sections import move_renamed_keys


def save_train_config(cfg: TrainConfig, file: str | Path) -> None:
    """The resolved config as YAML (every key, defaults included)."""
    OmegaConf.save(OmegaConf.structured(cfg), file)


def load_train_config(file: str | Path) -> TrainConfig:
    """The TrainConfig a run saved: keys added to the schema since take their defaults,
    keys renamed since (RENAMED_KEYS) their new names."""
    try:
        saved = OmegaConf.load(file)
        move_renamed_keys(saved)
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(TrainConfig), saved))
    except (OSError, yaml.YAMLError, OmegaConfBaseException) as err:
        reason = " ".join(str(err).split())  # one line, as every user error is
        raise ConfigError(
            f"{file} is not a readable training config ({reason}); the checkpoint is "
            "damaged: give another step_* directory"
        ) from None
