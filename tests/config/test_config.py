import itertools
import re
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ConfigAttributeError, ValidationError

from framework.commands.compose import CONF_DIR, compose_train_config, hyperparameter_line
from framework.config.checks import train_config_warnings
from framework.config.schema import ConfigError, TrainConfig
from framework.suite.build import trained_families
from framework.suite.families import FAMILIES
from tests.helpers import compose_config

GROUPS = ("model", "data", "parallelism", "trainer", "cluster", "logger")


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_default_composes_to_typed_config():
    cfg = compose_train_config([])  # the embedded default run: the real model
    assert cfg.parallelism.zero_stage == 2
    assert cfg.cluster.num_workers == 2 and not cfg.cluster.use_gpu
    assert cfg.model.name_or_path == "smollm2_135m"
    assert Path(cfg.run.output_dir).is_absolute() and cfg.run.name == "smollm2-sft"


def test_a_preset_carries_its_fine_tuning_defaults_and_the_tiny_model_keeps_its_own():
    real, tiny = compose_train_config(["model=smollm2_135m"]), compose_config()
    schema = TrainConfig()
    assert (real.trainer.lr, real.trainer.warmup_steps, real.data.max_seq_len) == (2e-4, 2, 512)
    assert (real.trainer.micro_batch_size, real.trainer.max_steps) == (4, 18)
    assert tiny.model.name_or_path is None
    assert (tiny.trainer.lr, tiny.trainer.max_steps) == (
        schema.trainer.lr,
        schema.trainer.max_steps,
    )
    assert (real.eval.max_new_tokens, tiny.eval.max_new_tokens) == (32, schema.eval.max_new_tokens)
    assert train_config_warnings(real) == [] and train_config_warnings(tiny) == []


def test_an_explicit_override_wins_over_the_preset_and_a_high_lr_warns():
    overrides = ["model=smollm2_135m", "trainer.lr=2e-3", "data.max_seq_len=256"]
    cfg = compose_train_config(overrides)
    assert (cfg.trainer.lr, cfg.data.max_seq_len, cfg.trainer.warmup_steps) == (2e-3, 256, 2)
    [warning] = train_config_warnings(cfg)
    assert warning.startswith("trainer.lr=0.002 is above 0.001 for the pretrained model")
    line = hyperparameter_line(cfg, "smollm2_135m", overrides)
    assert "trainer.lr=0.002* " in line and "data.max_seq_len=256*" in line
    assert "trainer.warmup_steps=2 " in line  # from the preset: not marked


def test_an_adapter_group_sets_its_learning_rate_over_the_preset_and_is_not_warned_about():
    cfg = compose_train_config(["model=smollm2_135m", "adapter=lora"])
    assert (cfg.trainer.lr, cfg.trainer.warmup_steps) == (2e-3, 2)  # the preset's warmup
    assert "(model=smollm2_135m, adapter=lora;" in hyperparameter_line(cfg, "smollm2_135m", [])
    high = compose_train_config(["model=smollm2_135m", "adapter=lora", "trainer.lr=3e-3"])
    assert train_config_warnings(high) == []  # adapters train at higher rates


def test_every_hub_preset_fine_tunes_below_the_warning_rate():
    for preset in ("llama3_8b", "mistral_7b", "qwen2_5_7b"):
        cfg = compose_train_config([f"model={preset}"])
        assert cfg.trainer.lr <= 1e-5 and not train_config_warnings(cfg), preset


def _combinations() -> list[dict[str, str]]:
    """Every combination of the groups that shape the run, with the data recipes rotated
    through them (data composes independently of the others), so each group option meets
    every other at least once at a fraction of the full product's cost."""
    others = [g for g in GROUPS if g != "data"]
    data = _options("data")
    return [
        {**dict(zip(others, combo, strict=True)), "data": data[i % len(data)]}
        for i, combo in enumerate(itertools.product(*(_options(g) for g in others)))
    ]


@pytest.mark.parametrize("choice", _combinations(), ids=lambda c: ",".join(c.values()))
def test_every_group_combination_composes(choice):
    cfg = compose_config([f"{group}={name}" for group, name in choice.items()])
    assert cfg.parallelism.zero_stage in (0, 1, 2, 3)


def test_documented_overrides_apply():
    cfg = compose_config(
        [
            "trainer.max_steps=7",
            "trainer.seed=3",
            "trainer.micro_batch_size=2",
            "trainer.grad_accum_steps=4",
            "trainer.lr=1e-4",
            "trainer.log_every=2",
            "checkpoint.every=5",
            "data.max_seq_len=256",
            "data.packing=false",
            "parallelism=zero3_offload",
            "cluster.num_workers=1",
            "cluster.use_gpu=true",
            "cluster.address=auto",
            "logger=none",
            "run.output_dir=/tmp/somewhere",
        ]
    )
    assert (cfg.trainer.max_steps, cfg.trainer.seed, cfg.trainer.micro_batch_size) == (7, 3, 2)
    assert (cfg.trainer.grad_accum_steps, cfg.trainer.lr) == (4, 1e-4)
    assert (cfg.trainer.log_every, cfg.checkpoint.every) == (2, 5)
    assert (cfg.data.max_seq_len, cfg.data.packing) == (256, False)
    assert cfg.parallelism.zero_stage == 3 and cfg.parallelism.offload_params
    assert (cfg.cluster.num_workers, cfg.cluster.use_gpu, cfg.cluster.address) == (1, True, "auto")
    assert cfg.logger.backend == "none"
    assert cfg.run.output_dir == "/tmp/somewhere"


def test_unknown_key_is_rejected():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["trainer.max_stepz=3"])
    assert isinstance(err.value.__cause__, ConfigAttributeError)
    assert "max_stepz" in str(err.value.__cause__)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.eval_every=5", "trainer.eval_every is now eval.every"),
        ("trainer.eval_ifeval_path=null", "trainer.eval_ifeval_path is now eval.ifeval_path"),
        ("trainer.resume=never", "trainer.resume is now checkpoint.resume"),
        ("trainer.loss_chunk_tokens=64", "trainer.loss_chunk_tokens is now loss.chunk_tokens"),
    ],
)
def test_a_key_moved_out_of_trainer_names_its_new_key(override, message):
    with pytest.raises(ConfigError) as err:
        compose_config([override])
    assert str(err.value) == message


def test_a_yaml_file_setting_a_moved_key_names_its_new_key(tmp_path):
    """A preset of the user's own (on Hydra's search path), written before the split."""
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text(
        "# @package _global_\ntrainer:\n  lr: 1e-3\n  save_every: 7\n"
    )
    with pytest.raises(ConfigError) as err:
        compose_config([f"hydra.searchpath=[file://{tmp_path}]", "model=mine"])
    assert str(err.value) == "trainer.save_every is now checkpoint.every"


def test_wrong_type_is_rejected():
    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["trainer.max_steps=many"])
    assert isinstance(err.value.__cause__, ValidationError)


def test_unknown_group_option_is_rejected():
    with pytest.raises(ConfigCompositionException, match="zero9"):
        compose_config(["parallelism=zero9"])


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("trainer.max_steps=0", "trainer.max_steps"),
        ("trainer.precision=fp8", "trainer.precision"),
        ("parallelism=zero0 trainer.precision=bf16", "trainer.precision=bf16"),
        ("logger.mode=sometimes", "logger.mode"),
        ("parallelism.zero_stage=5", "parallelism.zero_stage"),
        ("parallelism.offload_params=true", "parallelism.offload_params"),
        ("data.max_seq_len=100000", "data.max_seq_len"),
        ("data.path=/no/such/file.jsonl", "data.sources[0].path"),
        # grpo: a group of one, a batch that is not whole groups or not one per worker
        ("objective=grpo data=rl_demo rollout.group_size=1", "rollout.group_size=1"),
        (
            "objective=grpo data=rl_demo rollout.batch_completions=30",
            "rollout.batch_completions=30",
        ),
        ("objective=grpo data=rl_demo rollout.batch_completions=8", "rollout.batch_completions=8"),
        ("objective=grpo data=rl_demo objective.aggregation=mean", "objective.aggregation"),
        ("objective=grpo data=rl_demo rollout.max_new_tokens=1024", "rollout.max_new_tokens"),
        ("objective=grpo", "data.sources"),
        ("objective=grpo data=rl_demo data.sources.0.verifier=judge", "data.sources[0].verifier"),
        ("objective=grpo data=rl_demo rollout.generator=vllm", "rollout.generator"),
        (
            "objective=grpo data=rl_demo rollout.generator=actors rollout.generators=0",
            "rollout.generators=0",
        ),
        (
            "objective=grpo data=rl_demo rollout.generator=actors adapter=qlora "
            "model.name_or_path=x",
            "rollout.generator=actors",
        ),
        ("parallelism.sequence_parallel=0", "parallelism.sequence_parallel"),
        ("parallelism.sequence_parallel=3", "cluster.num_workers=2 is not a multiple"),
        ("parallelism.sequence_parallel=2 objective=dpo data=dpo_demo", "objective=sft only"),
        ("parallelism.sequence_parallel=2 model.attention=sdpa", "model.attention=sdpa"),
        (
            "parallelism.sequence_parallel=2 cluster.num_workers=4 model=tiny_llama "
            "model.num_heads=6 model.num_kv_heads=3",
            "cannot split the model's 6 attention heads (3 key-value heads)",
        ),
    ],
)
def test_bad_values_name_their_key(override, key):
    with pytest.raises(ConfigError, match=re.escape(key)):
        compose_config(override.split())


def test_cluster_placement_and_gpus_per_worker():
    cfg = compose_config(["cluster.placement=strict_spread", "cluster.gpus_per_worker=0.5"])
    assert (cfg.cluster.placement, cfg.cluster.gpus_per_worker) == ("strict_spread", 0.5)
    default = compose_config().cluster
    assert (default.placement, default.gpus_per_worker) == ("pack", 1.0)
    allowed = "['pack', 'spread', 'strict_pack', 'strict_spread']"
    with pytest.raises(
        ConfigError, match=re.escape(f"cluster.placement='diagonal' is not one of {allowed}")
    ):
        compose_config(["cluster.placement=diagonal"])
    with pytest.raises(ConfigError, match=re.escape("cluster.gpus_per_worker=0.0 must be > 0")):
        compose_config(["cluster.gpus_per_worker=0"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            "data.suite.held_out=[reverse,add]",
            "data.suite.held_out: unknown task family ['reverse']",
        ),
        ("data.suite.train_families=[add,subtract]", "both name ['subtract']"),
        ("data.suite.train_examples=0", "data.suite.train_examples=0 must be > 0"),
        ("data.suite.multi_turn=1.5", "data.suite.multi_turn=1.5 must be in [0, 1]"),
        ("eval.suite_per_family=-1", "eval.suite_per_family must be >= 0"),
    ],
)
def test_bad_suite_settings_name_their_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose_config(override.split())


def test_trained_families_are_the_chosen_ones_or_all_but_the_held_out():
    default = compose_config([]).data.suite
    assert set(trained_families(default)) == set(FAMILIES) - set(default.held_out)
    few = compose_config(["data.suite.train_families=[recall,add]"]).data.suite
    assert trained_families(few) == ["add", "recall"]  # in the suite's order
    everything = [f"data.suite.held_out=[{','.join(FAMILIES)}]"]
    with pytest.raises(ConfigError, match="held_out holds every family"):
        compose_config(everything)


def test_sizes_left_null_are_the_device_classs_and_given_ones_win():
    cpu = compose_config()
    assert (cpu.trainer.micro_batch_size, cpu.loss.chunk_tokens) == (4, 256)
    assert cpu.model.gradient_checkpointing is False
    gpu = compose_config(["cluster.use_gpu=true", "data.max_seq_len=4096"])
    assert (gpu.trainer.micro_batch_size, gpu.loss.chunk_tokens) == (2, 2048)
    assert gpu.model.gradient_checkpointing is True  # long rows
    short = compose_config(["cluster.use_gpu=true", "data.max_seq_len=512"])
    assert short.trainer.micro_batch_size == 16 and short.model.gradient_checkpointing is False
    given = compose_config(["cluster.use_gpu=true", "trainer.micro_batch_size=3"])
    assert given.trainer.micro_batch_size == 3
    assert given.sized_for_device == [
        "loss.chunk_tokens=2048",
        "model.gradient_checkpointing=False",
    ]
    preset = compose_config(["model=llama3_8b", "cluster.use_gpu=true"])
    assert preset.trainer.micro_batch_size == 1  # the preset's own


def test_a_data_recipe_s_max_seq_len_wins_over_the_model_preset_s():
    # data comes after model in conf/train.yaml's defaults: a recipe that sets
    # max_seq_len keeps it; one that does not (suite) gets the preset's.
    def length(*overrides: str) -> int:
        return compose_train_config(list(overrides)).data.max_seq_len

    assert length("data=glaive_toolcall") == 2048  # over smollm2_135m's 512
    assert length("model=llama3_8b", "data=identity") == 256  # under the preset's 2048
    assert length("model=llama3_8b", "data=suite") == 2048
    assert length("data=glaive_toolcall", "data.max_seq_len=1024") == 1024  # command line
