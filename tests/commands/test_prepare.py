import json
from pathlib import Path

import numpy as np
import pytest

from framework.commands.compose import CONF_DIR, compose_train_config
from framework.commands.prepare import prepare_run, size_the_run
from framework.config.schema import ConfigError, TrainConfig
from framework.data.curate.planted import main as planted
from framework.data.formats import DataError
from framework.data.pack import PackingPlan
from framework.run.files import DATASET_POINTER, artifact_path

STATS = {"tokens": 100 * 500, "examples": 400}  # 100 rows of 500 tokens, 4 examples each
PLAN = PackingPlan(np.arange(400), np.arange(0, 401, 4))


def _cfg(**trainer) -> TrainConfig:
    cfg = TrainConfig()
    cfg.cluster.num_workers, cfg.trainer.micro_batch_size = 2, 5
    for key, value in trainer.items():
        setattr(cfg.trainer, key, value)
    return cfg


def test_epochs_set_the_number_of_steps():
    cfg = _cfg(epochs=3, grad_accum_steps=2)
    sized = size_the_run(cfg, STATS, PLAN)
    # 100 rows / (2 workers x 5 rows) = 10 micro steps per epoch, 2 per optimizer step.
    assert sized.trainer.max_steps == 15
    assert cfg.trainer.max_steps == TrainConfig().trainer.max_steps  # a copy: cfg as given


def test_global_batch_in_tokens_or_examples_sets_accumulation():
    tokens = size_the_run(_cfg(global_batch_tokens=20_000), STATS, PLAN)
    assert tokens.trainer.grad_accum_steps == 4  # 20,000 / (10 rows x 500 tokens)
    examples = size_the_run(_cfg(global_batch_examples=120), STATS, PLAN)
    assert examples.trainer.grad_accum_steps == 3  # 120 / (10 rows x 4 examples)


def test_too_little_data_for_one_step_is_an_error():
    cfg = _cfg()
    cfg.cluster.num_workers = 64
    with pytest.raises(DataError, match="fewer than one micro batch for each of 64 workers"):
        size_the_run(cfg, STATS, PLAN)


def test_a_worker_that_cannot_see_the_run_paths_is_told_which_key_to_share(tmp_path):
    with pytest.raises(ConfigError, match=r"dataset.json does not exist .* set run.output_dir"):
        artifact_path(tmp_path)
    (tmp_path / DATASET_POINTER).write_text(json.dumps({"path": str(tmp_path / "gone")}))
    with pytest.raises(ConfigError, match=r"gone does not exist .* set run.cache_dir"):
        artifact_path(tmp_path)
    (tmp_path / "gone").mkdir()
    assert artifact_path(tmp_path) == tmp_path / "gone"


@pytest.mark.slow  # the real tokenizer: SmolLM2 converted from its GGUF (~25 s, shared)
def test_every_data_recipe_prepares_with_the_default_model(real_model_cache, tmp_path):
    """conf/data/*.yaml as their headers run them, with the default model's tokenizer:
    no recipe stops on a record its own max_seq_len cuts to nothing (counted instead)."""
    planted(str(tmp_path / "planted"))  # curate_demo's first header command
    for recipe in sorted((Path(CONF_DIR) / "data").glob("*.yaml")):
        objective = ["objective=dpo"] if recipe.stem == "dpo_demo" else []
        cfg = compose_train_config(
            [
                f"data={recipe.stem}",
                *objective,
                f"run.output_dir={tmp_path / recipe.stem}",
                f"run.cache_dir={real_model_cache[0]}",
                "data.num_proc=1",
            ]
        )
        for source in cfg.data.sources:
            if source.path.endswith("outputs/planted/planted.jsonl"):
                source.path = str(tmp_path / "planted" / "planted.jsonl")
        stats = prepare_run(cfg).stats
        assert stats["examples"] > 0 and stats["trained_tokens"] > 0, recipe.stem
        if recipe.stem == "glaive_toolcall":  # one prompt alone is over 2,048 tokens
            assert cfg.data.max_seq_len == 2048
            assert stats["sources"]["glaive_toolcall_en_demo"]["skipped"] == {"no_target": 1}
