"""A run's config.yaml: written resolved, read back on today's schema."""

import pytest
from omegaconf import OmegaConf

from framework.config.saved import load_train_config, save_train_config
from framework.config.schema import ConfigError, TrainConfig
from framework.config.sections import CheckpointConfig, EvalDuringTrainingConfig, LossConfig
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


def test_a_config_saved_before_the_trainer_split_loads_on_the_new_keys(tmp_path):
    """Run directories written when the loss, eval and checkpoint keys were trainer's."""
    expected = TrainConfig(
        loss=LossConfig(average="example", positions="all", chunk_tokens=128),
        eval=EvalDuringTrainingConfig(
            every=7, samples=1, max_new_tokens=16, suite_per_family=2, ifeval_prompts=5,
            ifeval_path="/data/ifeval.jsonl", ifeval_max_new_tokens=99, batch_size=8,
        ),
        checkpoint=CheckpointConfig(
            every=3, keep=4, resume="never", resume_on_changed_data="continue",
            stop_before_deadline_s=60.0,
        ),
    )  # fmt: skip
    saved = OmegaConf.to_container(OmegaConf.structured(expected), resolve=True)
    for section in ("loss", "eval", "checkpoint"):
        del saved[section]
    saved["trainer"].update(
        eval_every=7, eval_samples=1, eval_max_new_tokens=16, eval_suite_per_family=2,
        eval_ifeval_prompts=5, eval_ifeval_path="/data/ifeval.jsonl",
        eval_ifeval_max_new_tokens=99, eval_batch_size=8,
        save_every=3, keep_checkpoints=4, resume="never", resume_on_changed_data="continue",
        stop_before_deadline_s=60.0,
        loss_average="example", loss_positions="all", loss_chunk_tokens=128,
    )  # fmt: skip
    OmegaConf.save(OmegaConf.create(saved), tmp_path / "config.yaml")
    loaded = load_train_config(tmp_path / "config.yaml")
    sections = ("trainer", "loss", "eval", "checkpoint")
    assert [getattr(loaded, s) for s in sections] == [getattr(expected, s) for s in sections]


def test_a_damaged_config_names_the_file(tmp_path):
    (tmp_path / "config.yaml").write_text("trainer: {max_steps: [unclosed")
    with pytest.raises(
        ConfigError, match=r"config\.yaml is not a readable training config \(while parsing"
    ):
        load_train_config(tmp_path / "config.yaml")
