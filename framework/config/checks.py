"""Checks that need more than one field or more than a type: each raises ConfigError
naming the key whose value cannot work, and the fix."""

from __future__ import annotations

from pathlib import Path

from framework.config.schema import ConfigError, SourceConfig, TrainConfig
from framework.config.sections import EvalDuringTrainingConfig

_CHOICES = {
    "model.attention": (
        "auto",
        "document_sdpa",
        "flash_attention_2",
        "flex_attention",
        "sdpa",
        "eager",
    ),
    "data.train_on": ("assistant", "last_turn", "all"),
    "data.overlong": ("truncate", "drop"),
    "data.on_error": ("raise", "skip"),
    "data.preprocess": ("auto", "local", "ray"),
    "trainer.precision": ("auto", "fp32", "bf16"),
    "loss.average": ("token", "example"),
    "loss.positions": ("trained", "all"),
    "trainer.on_non_finite": ("stop", "skip"),
    "checkpoint.resume_on_changed_data": ("stop", "continue"),
    "trainer.lr_schedule": ("cosine", "linear", "constant"),
    "objective.name": ("sft", "dpo", "ipo", "simpo", "orpo", "grpo"),
    "objective.baseline": ("mean", "leave_one_out"),
    "objective.aggregation": ("token", "sequence", "constant"),
    "rollout.generator": ("colocated", "actors"),
    "rollout.old_logps": ("learner", "sampler"),
    "objective.reference": ("precomputed", "live"),
    "adapter.method": ("none", "lora", "dora", "qlora"),
    "logger.backend": ("wandb", "none"),
    "logger.mode": ("auto", "online", "offline", "disabled"),
    "parallelism.zero_stage": (0, 1, 2, 3),
    "cluster.placement": ("pack", "spread", "strict_pack", "strict_spread"),
}

_POSITIVE = (
    "trainer.max_steps",
    "trainer.micro_batch_size",
    "trainer.grad_accum_steps",
    "trainer.lr",
    "trainer.log_every",
    "checkpoint.every",
    "checkpoint.keep",
    "data.max_seq_len",
    "data.constraints_per_prompt",
    "eval.batch_size",
    "loss.chunk_tokens",
    "cluster.num_workers",
    "parallelism.sequence_parallel",
    "cluster.cpus_per_worker",
    "cluster.gpus_per_worker",
    "cluster.collective_timeout_s",
    "cluster.node_wait_s",
    "adapter.rank",
    "adapter.alpha",
    "objective.beta",
    "objective.updates_per_batch",
    "rollout.max_new_tokens",
    "rollout.generate_batch",
    "rollout.verifier_timeout_s",
    "rollout.max_logp_gap",
    "run.lease_stale_s",
)


def _get(cfg: TrainConfig, key: str):
    group, name = key.split(".")
    return getattr(getattr(cfg, group), name)


def check_train_config(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot work."""
    for key, allowed in _CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not one of {list(allowed)}")
    for key in _POSITIVE:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be > 0")
    evals = ("every", "samples", "max_new_tokens", "suite_per_family")
    if min(getattr(cfg.eval, key) for key in evals) < 0:
        raise ConfigError(f"eval.{', eval.'.join(evals)} must be >= 0")
    _check_ifeval_sample(cfg.eval)
    if cfg.trainer.warmup_steps < 0 or cfg.trainer.max_grad_norm < 0:
        raise ConfigError("trainer.warmup_steps and trainer.max_grad_norm must be >= 0")
    offload = cfg.parallelism.offload_optimizer or cfg.parallelism.offload_params
    if cfg.parallelism.offload_params and cfg.parallelism.zero_stage != 3:
        raise ConfigError(
            "parallelism.offload_params needs parallelism.zero_stage=3 "
            "(use parallelism=zero3_offload)"
        )
    if offload and cfg.parallelism.zero_stage == 0:
        raise ConfigError("parallelism.offload_optimizer needs parallelism.zero_stage >= 1")
    if cfg.trainer.precision == "bf16" and cfg.parallelism.zero_stage == 0:
        raise ConfigError(
            "trainer.precision=bf16 needs parallelism.zero_stage >= 1: under ZeRO-0 "
            "DeepSpeed accumulates bf16 gradients in bf16, not fp32"
        )
    if cfg.model.name_or_path is None and cfg.data.max_seq_len > cfg.model.max_position_embeddings:
        raise ConfigError(
            f"data.max_seq_len={cfg.data.max_seq_len} exceeds "
            f"model.max_position_embeddings={cfg.model.max_position_embeddings}"
        )
    targets = [cfg.trainer.global_batch_tokens, cfg.trainer.global_batch_examples]
    if all(t is not None for t in targets):
        raise ConfigError(
            "set at most one of trainer.global_batch_tokens and trainer.global_batch_examples"
        )
    if any(t is not None and t <= 0 for t in [*targets, cfg.trainer.epochs]):
        raise ConfigError(
            "trainer.epochs, trainer.global_batch_tokens and trainer.global_batch_examples "
            "must be > 0 when set"
        )
    if not 0.0 <= cfg.data.eval_fraction < 1.0:
        raise ConfigError(f"data.eval_fraction={cfg.data.eval_fraction} must be in [0, 1)")
    if cfg.data.num_proc < 0 or cfg.data.inspect < 0:
        raise ConfigError("data.num_proc and data.inspect must be >= 0")
    for group in ("sources", "eval_sources"):
        for index, source in enumerate(getattr(cfg.data, group)):
            _check_source(source, f"data.{group}[{index}]", cfg.objective.pairs)
    _check_curate(cfg.data.curate)
    _check_adapter(cfg)
    _check_objective(cfg)
    _check_sequence_parallel(cfg)


# Attention a sequence-parallel group can split: found from positions (not a dense mask,
# nor flex_attention's block mask, which the split would rebuild causal over the row).
SPLITTABLE_ATTENTION = ("auto", "document_sdpa", "flash_attention_2")


def _check_sequence_parallel(cfg: TrainConfig) -> None:
    size, workers = cfg.parallelism.sequence_parallel, cfg.cluster.num_workers
    if size == 1:
        return
    key = f"parallelism.sequence_parallel={size}"
    if workers % size:
        raise ConfigError(f"cluster.num_workers={workers} is not a multiple of {key}: set one")
    if cfg.objective.name != "sft":
        raise ConfigError(
            f"{key} trains objective=sft only (objective={cfg.objective.name} is not split "
            "yet); set parallelism.sequence_parallel=1"
        )
    if cfg.model.attention not in SPLITTABLE_ATTENTION:
        raise ConfigError(
            f"{key} cannot split model.attention={cfg.model.attention}: use one of "
            f"{list(SPLITTABLE_ATTENTION)}"
        )
    if cfg.model.name_or_path is None:  # a pretrained model's heads: check_model_source
        check_split_heads(cfg.model.num_heads, cfg.model.num_kv_heads, size)


def check_split_heads(heads: int, kv_heads: int, size: int) -> None:
    """Raise ConfigError unless a sequence-parallel group of `size` can share out the heads."""
    if heads % size or (kv_heads % size and size % kv_heads):
        raise ConfigError(
            f"parallelism.sequence_parallel={size} cannot split the model's {heads} attention "
            f"heads ({kv_heads} key-value heads), 1/{size} to each worker: set it to a divisor "
            f"of {heads} that divides {kv_heads} or is a multiple of it"
        )


def _check_curate(curate) -> None:
    for key in ("near_threshold", "max_repetition"):
        if not 0.0 < getattr(curate, key) <= 1.0:
            raise ConfigError(f"data.curate.{key}={getattr(curate, key)} must be in (0, 1]")
    for key in ("near_ngram", "near_num_perm", "decontaminate_ngram", "decontaminate_min_words"):
        if getattr(curate, key) < 1:
            raise ConfigError(f"data.curate.{key}={getattr(curate, key)} must be >= 1")
    low, high = curate.min_reply_ratio, curate.max_reply_ratio
    if (low is not None and low < 0) or (high is not None and high <= (low or 0)):
        raise ConfigError(
            f"data.curate.min_reply_ratio={low} and max_reply_ratio={high}: need "
            "0 <= min < max (null turns either off)"
        )
    if curate.show < 0 or curate.suite_items_per_family < 0 or curate.repetition_min_words < 1:
        raise ConfigError(
            "data.curate.show and suite_items_per_family must be >= 0, repetition_min_words >= 1"
        )


def _check_objective(cfg: TrainConfig) -> None:
    objective = cfg.objective
    if not 0.0 <= objective.label_smoothing < 0.5:
        raise ConfigError(
            f"objective.label_smoothing={objective.label_smoothing} must be in [0, 0.5)"
        )
    if objective.orpo_lambda < 0 or objective.simpo_gamma < 0:
        raise ConfigError("objective.orpo_lambda and objective.simpo_gamma must be >= 0")
    if objective.online:
        _check_online(cfg)
    if not objective.pairs:
        return
    name = f"objective={objective.name}"
    if not cfg.data.sources:
        raise ConfigError(
            f"{name} trains on preference pairs, but data.sources is empty (the built-in "
            "suite has none): use data=dpo_demo, or data.path=<file of prompt / chosen / "
            "rejected records>"
        )
    if cfg.loss.average != "token":
        raise ConfigError(
            f"loss.average={cfg.loss.average} applies to sft; {name} "
            "averages over pairs: leave loss.average=token"
        )
    live_copy = objective.reference == "live" and cfg.adapter.method == "none"
    if live_copy and objective.needs_reference and cfg.parallelism.zero_stage == 3:
        raise ConfigError(
            "objective.reference=live with full fine-tuning holds a whole second model on "
            "every rank, which ZeRO-3 is chosen to avoid: use objective.reference=precomputed "
            "or an adapter"
        )


def _check_online(cfg: TrainConfig) -> None:
    objective, rollout = cfg.objective, cfg.rollout
    if not cfg.data.sources:
        raise ConfigError(
            "objective=grpo samples replies to prompts that verifiers check, but data.sources "
            "is empty: use data=rl_demo, or sources whose records (or data.sources[i].verifier) "
            "name a verifier"
        )
    if rollout.group_size < 2:
        raise ConfigError(
            f"rollout.group_size={rollout.group_size}: advantages compare the completions of "
            "one prompt with each other; give at least 2"
        )
    groups, workers = divmod(rollout.batch_completions, rollout.group_size)
    if workers or groups < cfg.cluster.num_workers:
        raise ConfigError(
            f"rollout.batch_completions={rollout.batch_completions} must be a multiple of "
            f"rollout.group_size={rollout.group_size} with at least one group per worker "
            f"(cluster.num_workers={cfg.cluster.num_workers}): each rank samples whole groups"
        )
    if not 0.0 <= objective.clip_low < 1.0 or objective.clip_high < 0 or objective.kl_coef < 0:
        raise ConfigError(
            "objective.clip_low must be in [0, 1), objective.clip_high and objective.kl_coef >= 0"
        )
    if rollout.max_new_tokens >= cfg.data.max_seq_len:
        raise ConfigError(
            f"rollout.max_new_tokens={rollout.max_new_tokens} leaves no room for a prompt in "
            f"data.max_seq_len={cfg.data.max_seq_len}: raise data.max_seq_len"
        )
    if rollout.generator == "actors":
        _check_generators(cfg)
    full_copy = objective.kl_coef > 0 and cfg.adapter.method == "none"
    if full_copy and cfg.parallelism.zero_stage == 3:
        raise ConfigError(
            "objective.kl_coef > 0 with full fine-tuning holds a whole reference model on "
            "every rank, which ZeRO-3 is chosen to avoid: use an adapter or kl_coef=0"
        )


def _check_generators(cfg: TrainConfig) -> None:
    rollout = cfg.rollout
    if rollout.generators < 1 or rollout.cpus_per_generator < 0:
        raise ConfigError(
            f"rollout.generators={rollout.generators} must be at least 1 and "
            f"rollout.cpus_per_generator={rollout.cpus_per_generator} at least 0 with "
            "rollout.generator=actors"
        )
    if cfg.adapter.method == "qlora":
        raise ConfigError(
            "rollout.generator=actors sends the policy's weights to the actors, and QLoRA's "
            "are 4-bit: use rollout.generator=colocated, or adapter=lora"
        )


def _check_adapter(cfg: TrainConfig) -> None:
    adapter = cfg.adapter
    if not 0.0 <= adapter.dropout < 1.0:
        raise ConfigError(f"adapter.dropout={adapter.dropout} must be in [0, 1)")
    if adapter.method != "none" and cfg.model.name_or_path is None:
        raise ConfigError(
            f"adapter={adapter.method} trains adapters over pretrained weights, but "
            "model.name_or_path is null (a random-init model): give a pretrained model "
            "(e.g. model=smollm2_135m), or adapter=none"
        )


# A full fine-tune of a pretrained model above this rate overwrites what pretraining taught
# it (the random-init tiny model's 2e-3 is the case this catches).
PRETRAINED_MAX_LR = 1e-3


def train_config_warnings(cfg: TrainConfig) -> list[str]:
    """Values that work but are likely a mistake, each naming the key."""
    warnings = []
    full = cfg.adapter.method == "none"
    if full and cfg.model.name_or_path is not None and cfg.trainer.lr > PRETRAINED_MAX_LR:
        warnings.append(
            f"trainer.lr={cfg.trainer.lr:g} is above {PRETRAINED_MAX_LR:g} for the pretrained "
            f"model {cfg.model.name_or_path}: a full fine-tune at this rate destroys what it "
            "learned in pretraining; its preset's value (model=<preset>) or trainer.lr=1e-4 "
            "or lower is the usual choice"
        )
    return warnings


# feedback: launch/serve.py's conversation log (its log_dir), read as preference pairs.
SOURCE_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text", "feedback")


def _check_source(source: SourceConfig, key: str, pairs: bool) -> None:
    if source.format not in SOURCE_FORMATS:
        raise ConfigError(f"{key}.format={source.format!r} is not one of {list(SOURCE_FORMATS)}")
    if source.format == "feedback" and not pairs:
        raise ConfigError(
            f"{key}.format=feedback gives preference pairs: use objective=dpo (or ipo, simpo, orpo)"
        )
    if source.weight <= 0:
        raise ConfigError(f"{key}.weight={source.weight} must be > 0")
    if source.max_samples is not None and source.max_samples <= 0:
        raise ConfigError(f"{key}.max_samples={source.max_samples} must be > 0 or null")
    if Path(source.path).is_absolute() and not Path(source.path).exists():
        raise ConfigError(
            f"{key}.path: no such file or folder {source.path}; point it at a JSON/JSONL/"
            "Parquet/CSV file, a folder of them, a saved `datasets` directory or a hub name "
            "(data.path=null with no sources trains on the built-in suite)"
        )


def _check_ifeval_sample(evaluation: EvalDuringTrainingConfig) -> None:
    prompts, path = evaluation.ifeval_prompts, evaluation.ifeval_path
    if prompts < 0:
        raise ConfigError(f"eval.ifeval_prompts={prompts} must be >= 0 (0: off)")
    if evaluation.ifeval_max_new_tokens <= 0:
        raise ConfigError("eval.ifeval_max_new_tokens must be > 0")
    if path is not None and not Path(path).is_file():
        raise ConfigError(
            f"eval.ifeval_path={path}: no such file; give IFEval's input_data.jsonl, "
            "or null for the hub's google/IFEval"
        )
