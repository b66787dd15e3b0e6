import pytest

from framework.config.schema import ConfigError, ModelConfig, TrainConfig
from framework.hf.resolve import model_source
from framework.model.build import check_model_source


def _train(name_or_path, tmp_path) -> TrainConfig:
    cfg = TrainConfig(model=ModelConfig(name_or_path=name_or_path))
    cfg.run.cache_dir = str(tmp_path / "cache")
    return cfg


def _checked(cfg: TrainConfig) -> str | None:
    """What prepare_run does: the model's name resolved, then the model it names checked."""
    source = model_source(cfg)
    check_model_source(cfg, source)
    return source


def test_missing_local_model_dir_is_named(tmp_path):
    missing = tmp_path / "no-model-here"
    with pytest.raises(
        ConfigError, match=r"^model\.name_or_path=\S+no-model-here: no such file or directory"
    ):
        _checked(_train(str(missing), tmp_path))


def test_dir_without_model_files_is_named(tmp_path):
    (tmp_path / "model").mkdir()
    with pytest.raises(ConfigError, match=r"holds no config\.json, \.gguf or step_\*"):
        _checked(_train(str(tmp_path / "model"), tmp_path))


def test_a_directory_whose_config_cannot_load_is_named(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"could not be loaded .*Give a preset"):
        _checked(_train(str(tmp_path / "model"), tmp_path))


def test_built_in_model_needs_no_source(tmp_path):
    assert _checked(_train(None, tmp_path)) is None


def test_a_model_that_changes_its_logits_after_the_head_needs_the_full_logit_loss(tmp_path):
    """Gemma 2 soft-caps its logits after the LM head, which the trained-positions loss
    (applying the head itself) would leave out: refused, naming the key to set."""
    from transformers import Gemma2Config

    model = tmp_path / "model"
    Gemma2Config(final_logit_softcapping=30.0).save_pretrained(model)
    with pytest.raises(ConfigError, match=r"final_logit_softcapping.*loss\.positions=all$"):
        _checked(_train(str(model), tmp_path))
    cfg = _train(str(model), tmp_path)
    cfg.loss.positions = "all"
    assert _checked(cfg) == str(model)


def test_a_pretrained_models_heads_that_a_split_cannot_share_out_are_named(tmp_path):
    """Checked on the driver from the model's config: SmolLM2-135M's 9 heads over 3
    key-value heads split in 3, not in 2."""
    from transformers import LlamaConfig

    model = tmp_path / "model"
    LlamaConfig(num_attention_heads=9, num_key_value_heads=3, hidden_size=576).save_pretrained(
        model
    )
    cfg = _train(str(model), tmp_path)
    cfg.parallelism.sequence_parallel = 2
    with pytest.raises(ConfigError, match=r"sequence_parallel=2 cannot split .* 9 attention"):
        _checked(cfg)
    cfg.parallelism.sequence_parallel = 3
    assert _checked(cfg) == str(model)
