import pytest

from framework.config.schema import ConfigError, ModelConfig
from framework.model.build import check_model_source


def test_missing_local_model_dir_is_named(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(ConfigError, match=r"model\.name_or_path: no such directory"):
        check_model_source(ModelConfig(name_or_path=str(missing)))


def test_dir_without_model_files_is_named(tmp_path):
    with pytest.raises(ConfigError, match="could not be loaded"):
        check_model_source(ModelConfig(name_or_path=str(tmp_path)))


def test_built_in_model_needs_no_source():
    check_model_source(ModelConfig(name_or_path=None))
