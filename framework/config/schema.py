"""Typed configuration: one dataclass per Hydra config group of a training run, and the
schemas of the chat, eval and export commands; the loss, eval and checkpoint sections of a
training run are config/sections.py's. The defaults there and here are the only ones: the
YAML files of `conf/` set only what an option changes.

Hydra composes YAML from `conf/` onto these schemas (commands/compose.py), so an unknown key
or a value of the wrong type fails at composition time; config/checks.py applies the
checks that need more than one field. Workers only ever see these dataclasses.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from omegaconf import MISSING

from framework.config.sections import (
    CheckpointConfig,
    EvalDuringTrainingConfig,
    LossConfig,
    ObjectiveConfig,
    RolloutConfig,
)
from framework.config.sizes import fill_device_sizes


class ConfigError(ValueError):
    """A config value is wrong; the message names the key and the fix."""


def first_line(err: BaseException) -> str:
    """The first line of `err`'s message, for a one-line error (its type when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# Built tokenizers, data artifacts and converted models (GGUF files, checkpoints) are
# cached here between runs and commands.
DEFAULT_CACHE_DIR = os.path.join(os.environ.get("HOME", "/tmp"), ".cache", "instruct-sft")
# Accepted wherever a model is named (framework/hf/resolve.py).
MODEL_FORMS = (
    "a preset (smollm2_135m, llama3_8b, ...), a Hugging Face directory or hub id, a .gguf "
    "file, a run's hf/, or a checkpoint (step_* or run.checkpoint_dir)"
)


@dataclass
class ModelConfig:
    # A pretrained causal LM: a preset, Hugging Face directory or hub id, .gguf file, a
    # run's hf/ or a checkpoint (framework/hf/resolve.py). None builds a small Llama
    # from the fields below, with random weights and a tokenizer trained on the run's data.
    name_or_path: str | None = None
    trust_remote_code: bool = False
    # How packed rows attend: auto picks flash_attention_2 on GPUs with flash-attn
    # installed, else document_sdpa (SDPA per example). `sdpa` is transformers' dense
    # block mask over the whole row (slower; kept for comparison).
    attention: str = "auto"
    # Recompute activations in backward: less memory, about a third more compute. null:
    # sized for the device (device_sizes: on GPUs for rows of 2,048 tokens or more).
    gradient_checkpointing: bool | None = None
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
    # auto | alpaca | sharegpt | messages | prompt_completion | text | feedback (the
    # log_dir of launch/serve.py, its ratings as preference pairs: framework/data/feedback.py)
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
    # grpo: how replies to this source's prompts are rewarded when a record names no
    # verifier of its own (a "verifier" field): ifeval attaches data.constraints_per_prompt
    # IFEval-style constraints (framework/data/constraints.py) to each instruction;
    # exact_answer needs an `answer` field; suite needs a `spec` of {family, reference}.
    verifier: str | None = None


# Twists: each a variant or combination of trained skills, so zero-shot accuracy on them
# measures transfer: lowercase (uppercase), subtract (add), sort_descending
# (sort_ascending), last_letters (first_letters), multi_step (reverse_word + uppercase),
# answer_format.
HELD_OUT_TWISTS: tuple[str, ...] = (
    "lowercase",
    "subtract",
    "sort_descending",
    "last_letters",
    "multi_step",
    "answer_format",
)
# Knowledge (framework/suite/knowledge.py): facts a pretrained model knows from
# pretraining, asked for in a terse form that only instruction following gives.
KNOWLEDGE_FAMILIES: tuple[str, ...] = (
    "capital_city",
    "opposite_word",
    "plural_noun",
    "calendar_order",
    "number_from_words",
)
DEFAULT_HELD_OUT: tuple[str, ...] = HELD_OUT_TWISTS + KNOWLEDGE_FAMILIES


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
class CurateConfig:
    """Curation after mixing, before rendering (framework/data/curate): every removal is
    counted per source and reason (data_stats.json) and listed in the artifact's
    removed.jsonl; `prepare.py data.curate.show=N` prints N per reason. Defaults were
    measured on ../shared/data (README, "Curation")."""

    enabled: bool = True
    exact: bool = True  # the same conversation twice (normalised: case, spaces, NFKC)
    exact_prompt: bool = False  # the same prompt (user and tool turns) with another answer
    # MinHash LSH over word shingles, a candidate kept out only if its true Jaccard is
    # above the threshold. Off by default: it costs the most (benchmarks/curation.py).
    near: bool = False
    near_threshold: float = 0.8
    near_ngram: int = 5
    near_num_perm: int = 128
    # Training prompts and replies sharing a word n-gram with an evaluation text: the
    # suite's validation and test items, the run's eval sources, these files (any
    # supported format, every string field). Shorter eval texts match whole when they
    # have at least decontaminate_min_words words.
    decontaminate: bool = True
    decontaminate_ngram: int = 13
    decontaminate_min_words: int = 6
    decontaminate_files: list[str] = field(default_factory=list)
    suite_items_per_family: int = 50  # of each split, as launch/eval.py's per_family
    # Replies with no word; equal to the prompt; whose word 3-grams repeat more than
    # max_repetition (only replies of repetition_min_words or more); and, when set,
    # reply/prompt word ratios outside [min_reply_ratio, max_reply_ratio] (the shared
    # files span 0.005-84 with good records at both ends, so both are off by default).
    quality: bool = True
    max_repetition: float = 0.5
    repetition_min_words: int = 20
    min_reply_ratio: float | None = None
    max_reply_ratio: float | None = None
    show: int = 0  # prepare.py: print this many removed records per reason


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
    # grpo: how many IFEval-style constraints a source with verifier ifeval attaches to
    # each instruction that carries no spec of its own (never two that conflict).
    constraints_per_prompt: int = 2
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
    curate: CurateConfig = field(default_factory=CurateConfig)
    # Where converting, curating and tokenizing run: local (num_proc processes), ray (tasks
    # on the cluster, the same artifact), auto (ray for stages of 10,000 records or more
    # when cluster.address or RAY_ADDRESS is set; smaller ones locally).
    preprocess: str = "auto"


@dataclass
class ParallelismConfig:
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    # Workers that share each packed row, a slice of its positions each, for rows longer
    # than one worker holds (Ulysses: attention gets the whole row by an all-to-all over
    # heads). cluster.num_workers is a multiple of it; data parallelism is over the groups.
    sequence_parallel: int = 1


@dataclass
class TrainerConfig:
    max_steps: int = 150
    seed: int = 1234
    # Rows per worker and micro step. null: sized for the device (device_sizes: 4 on CPUs,
    # about 8,192 tokens on GPUs).
    micro_batch_size: int | None = None
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
    # auto: bf16 on GPUs with bf16 units, and on CPUs with them (AVX512-BF16, AMX) where a
    # bf16 matmul is measured faster; fp32 elsewhere (bf16 emulated is 7-15x slower).
    # bf16 keeps fp32 master weights and accumulates and reduces gradients in fp32.
    precision: str = "auto"
    # Run the first micro batch unpacked too and stop if the losses disagree.
    verify_packing: bool = True
    # A NaN or infinite loss or gradient norm: "stop" the run before the weights change, or
    # "skip" that step and go on, stopping after max_skipped_steps skipped in a row.
    on_non_finite: str = "stop"
    max_skipped_steps: int = 10
    # Peak TFLOP/s of one device, for MFU; null looks the GPU up in a table (none on CPU).
    peak_tflops: float | None = None


@dataclass
class AdapterConfig:
    """What trains (framework/model/adapters.py): every weight, or small adapter matrices
    beside frozen base weights, through peft."""

    # none: full fine-tuning; lora: low-rank adapters; dora: weight-decomposed LoRA
    # (magnitude and direction trained apart); qlora: LoRA over a 4-bit NF4 base (CUDA
    # GPUs with bitsandbytes).
    method: str = "none"
    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    # Module names (or name suffixes) to adapt, e.g. [q_proj, v_proj]; empty: every linear
    # layer of the transformer blocks (peft's all-linear: not the LM head).
    target_modules: list[str] = field(default_factory=list)
    # Scale the update by alpha / sqrt(rank) instead of alpha / rank (rank-stabilized LoRA).
    rslora: bool = False
    # Modules trained in full beside the adapter and saved with it, e.g. [lm_head].
    modules_to_save: list[str] = field(default_factory=list)


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
    # Seconds a collective (all-reduce, all-gather, barrier) waits for a peer before it
    # fails its worker: how long a hang lasts when a host stops answering on the training
    # network while Ray still sees it (torch's own: 30 min on gloo, 10 on NCCL). Raise it
    # where one rank works alone longer (a large model's export on rank 0).
    collective_timeout_s: int = 600
    # Seconds a restart waits for room for every worker (a lost host to return, or a
    # spare to join) before the run fails, checkpointed, with one line saying so (Ray's
    # own wait never ends).
    node_wait_s: int = 600


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
    name: str = "sft"
    output_dir: str = "outputs/${run.name}"
    # Checkpoints: on a multi-node cluster, a path every node reads and writes.
    checkpoint_dir: str = "${run.output_dir}/checkpoints"
    # Where built tokenizers, data artifacts and converted models are cached between runs.
    cache_dir: str = DEFAULT_CACHE_DIR
    # A run's lease on run.output_dir (framework/run/lease.py) is renewed every quarter of
    # this and taken over once its heartbeat is older: longer than a file system stall
    # and the clock skew between hosts, short enough to wait out after a crash.
    lease_stale_s: float = 120.0
    # report.html in run.output_dir (framework/report/): redrawn in the background after
    # each checkpoint (about 3 s of a CPU core), and at the end by the driver.
    report: bool = True


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    eval: EvalDuringTrainingConfig = field(default_factory=EvalDuringTrainingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    adapter: AdapterConfig = field(default_factory=AdapterConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self) -> None:
        # Not a field (never saved): what null took, for the start-up line.
        self.sized_for_device: list[str] = fill_device_sizes(self)

    @property
    def data_workers(self) -> int:
        """Workers with rows of their own: a sequence-parallel group shares its rows."""
        return self.cluster.num_workers // self.parallelism.sequence_parallel

    def layout(self) -> str:
        """How a step's rows are laid out: workers (groups), rows, accumulation."""
        size, workers = self.parallelism.sequence_parallel, f"{self.cluster.num_workers} workers"
        if size > 1:
            groups = "1 group" if self.data_workers == 1 else f"{self.data_workers} groups"
            workers = f"{groups} of {size} workers sharing each row"
        return (
            f"{workers} x {self.trainer.micro_batch_size} rows x "
            f"{self.trainer.grad_accum_steps} accumulation steps"
        )
