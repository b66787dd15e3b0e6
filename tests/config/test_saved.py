"""A run's config.yaml: written resolved, read back on today's schema."""

import pytest
from omegaconf import OmegaConf

from framework.config.saved import load_train_config, save_train_config
from framework.config.schema import ConfigError, TrainConfig
from tests.helpers import TINY_RUN, compose_config


def test_the_saved_config_reads_back_equal(tmp_path):
    cfg = compose_config([*TINY_RUN, f"run.output_dir={tmp_path}"])
    save_train_config(cfg, tmp_path / "config.yaml")
    assert load_train_config(tmp_path / "config.yaml") == cfg


def test_a_config_saved_before_a_key_existed_takes_its_default(tmp_path):
    saved = OmegaConf.to_container(OmegaConf.structured(TrainConfig()))
    del saved["objective"]  # written before the objective group existed
    OmegaConf.save(OmegaConf.create(saved), tmp_path / "config.yaml")
    assert load_train_config(tmp_path / "config.yaml").objective.name == "sft"


def test_a_damaged_config_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("trainer: {max_steps: [unclosed")
    with pytest.raises(
        ConfigError, match=r"config\.yaml is not a readable training config \(while parsing"
    ):
        load_train_config(tmp_path / "config.yaml")
