"""Typed configuration: one dataclass per Hydra config group, plus cross-field checks.

Hydra composes YAML from `conf/` onto these schemas, so an unknown key or a value of the
wrong type fails at composition time. `from_hydra` turns the composed config into plain
dataclasses and applies the checks that need more than one field; workers only ever see
the dataclasses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from framework.suite.build import check_family_names
from framework.suite.families import DEFAULT_HELD_OUT, FAMILIES


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and the fix."""


@dataclass
class ModelConfig:
    # Hub id or local directory of a pretrained causal LM. None builds a small Llama from
    # the fields below, with random weights and a tokenizer trained on the run's data.
    name_or_path: str | None = None
    trust_remote_code: bool = False
    # How packed rows attend: auto picks flash_attention_2 on GPUs with flash-attn
    # installed, else document_sdpa (SDPA per example). `sdpa` is transformers' dense
    # block mask over the whole row (slower; kept for comparison).
    attention: str = "auto"
    # Recompute activations in backward: less memory, about a third more compute.
    gradient_checkpointing: bool = False
    # Architecture of the model built from config (ignored with name_or_path).
    vocab_size: int = 2048
    hidden_size: int = 128
    intermediate_size: int = 352
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_position_embeddings: int = 4096


@dataclass
class SourceConfig:
    # A JSON / JSONL / Parquet / CSV file, a folder of them, a local `datasets` directory
    # (save_to_disk) or a Hugging Face hub data set name.
    path: str = MISSING
    # auto | alpaca | sharegpt | messages | prompt_completion | text
    format: str = "auto"
    split: str = "train"  # hub / local `datasets` only
    subset: str | None = None  # hub config name
    # Our field name -> the data's column name, e.g. {instruction: question, output: answer}.
    columns: dict[str, str] = field(default_factory=dict)
    # The data's role name -> ours (system/user/assistant/tool), added to the built-in map.
    roles: dict[str, str] = field(default_factory=dict)
    # Examples taken = weight x the source's size (fraction sampled by seed); 2.0 repeats it.
    weight: float = 1.0
    max_samples: int | None = None  # cap applied before the weight
    name: str | None = None  # label in summaries; the path's stem by default


@dataclass
class SuiteConfig:
    """The built-in instruction suite (framework/suite): generated task families whose
    answers are checked exactly. Training data when data.sources is empty; evaluated
    zero-shot on the families held out of training."""

    # Families never trained on: their scores are zero-shot.
    held_out: list[str] = field(default_factory=lambda: list(DEFAULT_HELD_OUT))
    # Families trained on; empty: every family not held out.
    train_families: list[str] = field(default_factory=list)
    # Chats generated for training (data.sources empty).
    train_examples: int = 3000
    # Share of training chats that chain 2-3 tasks in one multi-turn conversation.
    multi_turn: float = 0.3
    # Instances: fixed apart from trainer.seed so that every run is scored on the same
    # validation and test items.
    seed: int = 0


@dataclass
class DataConfig:
    # The training mix. Empty (and no `path`) trains on the built-in suite (data.suite).
    sources: list[SourceConfig] = field(default_factory=list)
    # Shorthand for one source with format auto: data.path=my.jsonl
    path: str | None = None
    suite: SuiteConfig = field(default_factory=SuiteConfig)
    # Held-out evaluation data: its own sources, or a fraction of the training mix.
    eval_sources: list[SourceConfig] = field(default_factory=list)
    eval_fraction: float = 0.0
    max_seq_len: int = 512
    packing: bool = True
    # None uses the tokenizer's own template (ChatML when it has none); a built-in name
    # (chatml, llama3, mistral) or a Jinja string replaces it.
    chat_template: str | None = None
    # assistant: every assistant turn; last_turn: the final one; all: every token.
    train_on: str = "assistant"
    # Examples longer than max_seq_len: truncate (keep the start) or drop. Both are counted.
    overlong: str = "truncate"
    # raise: stop at the first bad record, naming file and line; skip: count and go on.
    on_error: str = "raise"
    # prepare.py: print this many rendered examples with their trained tokens marked.
    inspect: int = 0
    # Processes for preprocessing; 0 uses every core.
    num_proc: int = 0


@dataclass
class ParallelismConfig:
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False


@dataclass
class TrainerConfig:
    max_steps: int = 150
    seed: int = 1234
    micro_batch_size: int = 4
    grad_accum_steps: int = 1
    lr: float = 2e-3
    warmup_steps: int = 10
    # Decay after warmup: cosine (to 0), linear (to 0) or constant.
    lr_schedule: str = "cosine"
    # Train this many passes over the data instead of max_steps (null: use max_steps).
    epochs: float | None = None
    # Size the global batch by a target instead of grad_accum_steps (at most one of them):
    # accumulation steps = round(target / (workers x micro_batch_size x per-row average)).
    global_batch_tokens: int | None = None
    global_batch_examples: int | None = None
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    log_every: int = 10
    # Checkpoint every this many steps and at the end; keep the newest keep_checkpoints.
    save_every: int = 100
    keep_checkpoints: int = 2
    # auto: continue from the newest complete checkpoint in run.checkpoint_dir, if any;
    # never: start afresh (refused while run.checkpoint_dir holds checkpoints);
    # or the path of one checkpoint (a step_* directory).
    resume: str = "auto"
    # Under Slurm, checkpoint and stop this long before the job's time limit (more when
    # a step plus a save has been seen to take longer).
    stop_before_deadline_s: float = 300.0
    # Evaluate on the eval split (data.eval_fraction / data.eval_sources) every this many
    # steps and at the end; 0: at the end only. Greedy replies for eval_samples prompts.
    eval_every: int = 0
    eval_samples: int = 3
    eval_max_new_tokens: int = 64
    # At each evaluation (and before the first step when eval_every > 0): greedy answers
    # to this many validation items of every suite family, scored per family and for
    # trained vs held-out families (suite/* metrics); 0 turns it off.
    eval_suite_per_family: int = 4
    # Prompts generated together in one batch.
    eval_batch_size: int = 32
    # auto: bf16 on GPUs that support it, fp32 otherwise (bf16 on CPU is many times slower).
    precision: str = "auto"
    # token: the step's loss is the mean over every trained token of the global batch.
    # example: each example's mean token loss, averaged over the examples of the global
    # batch (short replies weigh as much as long ones).
    loss_average: str = "token"
    # Run the first micro batch unpacked too and stop if the losses disagree.
    verify_packing: bool = True
    # A NaN or infinite loss: "stop" the run before the weights change, or "skip" that
    # optimizer step and go on, stopping after max_skipped_steps skipped in a row.
    on_non_finite: str = "stop"
    max_skipped_steps: int = 10
    # Peak TFLOP/s of one device, for MFU; null looks the GPU up in a table (none on CPU).
    peak_tflops: float | None = None


@dataclass
class ClusterConfig:
    # None starts a private local Ray; "auto" (or host:port) joins a running cluster.
    # RAY_ADDRESS in the environment is honoured when this is None.
    address: str | None = None
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: int = 1
    # GPUs reserved for each worker when use_gpu. A worker trains on one GPU: more keeps
    # the rest of them free of other work; a fraction would put two ranks on one GPU, which
    # NCCL refuses.
    gpus_per_worker: float = 1.0
    # How Ray places the workers: pack (fill a node before the next: fewest nodes, fastest
    # communication), spread (one per node where possible), or strict_pack / strict_spread
    # (all on one node / each on its own node, else the run does not start).
    placement: str = "pack"
    # Restart the workers this many times after a worker or node dies (-1: always); each
    # restart continues from the newest checkpoint.
    max_failures: int = 0


@dataclass
class LoggerConfig:
    # "wandb" or "none"
    backend: str = "wandb"
    project: str = "instruct-sft"
    entity: str | None = None
    # auto: online when an API key is configured, offline otherwise.
    mode: str = "auto"


@dataclass
class RunConfig:
    name: str = "tiny-sft"
    output_dir: str = "outputs/${run.name}"
    # Checkpoints: on a multi-node cluster, a path every node reads and writes.
    checkpoint_dir: str = "${run.output_dir}/checkpoints"
    # Where built tokenizers are cached between runs.
    cache_dir: str = "${oc.env:HOME,/tmp}/.cache/instruct-sft"


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run: RunConfig = field(default_factory=RunConfig)


def register_schemas() -> None:
    """Make `train_schema` available to `conf/train.yaml`'s defaults list."""
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def from_hydra(raw: DictConfig) -> TrainConfig:
    """Resolve a composed Hydra config into checked dataclasses with absolute paths."""
    cfg: TrainConfig = OmegaConf.to_object(raw)
    cfg.run.output_dir = _absolute(cfg.run.output_dir)
    cfg.run.cache_dir = _absolute(cfg.run.cache_dir)
    cfg.run.checkpoint_dir = _absolute(cfg.run.checkpoint_dir)
    if cfg.trainer.resume not in ("auto", "never"):
        cfg.trainer.resume = _absolute(cfg.trainer.resume)
    if cfg.data.path is not None:
        cfg.data.sources = [SourceConfig(path=cfg.data.path)]
        cfg.data.path = None
    for source in [*cfg.data.sources, *cfg.data.eval_sources]:
        source.path = _local_or_hub(source.path)
    validate(cfg)
    return cfg


def _local_or_hub(path: str) -> str:
    """Absolute path for anything that exists locally or is written as a path; hub names
    (`org/name`) stay as they are."""
    if Path(path).expanduser().exists() or path.startswith(("/", ".", "~")):
        return _absolute(path)
    return path


def _absolute(path: str) -> str:
    # Ray workers run in their own working directories, so relative paths must be fixed
    # against the directory the user launched from.
    return str(Path(os.path.expanduser(path)).resolve())


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
    "trainer.precision": ("auto", "fp32", "bf16"),
    "trainer.loss_average": ("token", "example"),
    "trainer.on_non_finite": ("stop", "skip"),
    "trainer.lr_schedule": ("cosine", "linear", "constant"),
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
    "trainer.save_every",
    "trainer.keep_checkpoints",
    "data.max_seq_len",
    "trainer.eval_batch_size",
    "cluster.num_workers",
    "cluster.cpus_per_worker",
    "cluster.gpus_per_worker",
)


def _get(cfg: TrainConfig, key: str):
    group, name = key.split(".")
    return getattr(getattr(cfg, group), name)


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first key whose value cannot work."""
    for key, allowed in _CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r} is not one of {list(allowed)}")
    for key in _POSITIVE:
        if _get(cfg, key) <= 0:
            raise ConfigError(f"{key}={_get(cfg, key)} must be > 0")
    evals = ("eval_every", "eval_samples", "eval_max_new_tokens", "eval_suite_per_family")
    if min(getattr(cfg.trainer, key) for key in evals) < 0:
        raise ConfigError(f"trainer.{', trainer.'.join(evals)} must be >= 0")
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
            _validate_source(source, f"data.{group}[{index}]")
    validate_suite(cfg.data.suite, "data.suite")


def validate_suite(suite: SuiteConfig, key: str) -> None:
    """Raise ConfigError naming the suite key that cannot work."""
    for name in ("held_out", "train_families"):
        try:
            check_family_names(getattr(suite, name), f"{key}.{name}")
        except ValueError as err:
            raise ConfigError(str(err)) from None
    both = sorted(set(suite.held_out) & set(suite.train_families))
    if both:
        raise ConfigError(
            f"{key}.train_families and {key}.held_out both name {both}: a held-out family "
            "is never trained on; remove it from one of them"
        )
    if not trained_families(suite):
        raise ConfigError(f"{key}.held_out holds every family: nothing is left to train on")
    if suite.train_examples <= 0:
        raise ConfigError(f"{key}.train_examples={suite.train_examples} must be > 0")
    if not 0.0 <= suite.multi_turn <= 1.0:
        raise ConfigError(f"{key}.multi_turn={suite.multi_turn} must be in [0, 1]")


def trained_families(suite: SuiteConfig) -> list[str]:
    """The families training chats are drawn from, in the suite's order."""
    chosen = suite.train_families or [f for f in FAMILIES if f not in suite.held_out]
    return [f for f in FAMILIES if f in chosen and f not in suite.held_out]


SOURCE_FORMATS = ("auto", "alpaca", "sharegpt", "messages", "prompt_completion", "text")


def _validate_source(source: SourceConfig, key: str) -> None:
    if source.format not in SOURCE_FORMATS:
        raise ConfigError(f"{key}.format={source.format!r} is not one of {list(SOURCE_FORMATS)}")
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
