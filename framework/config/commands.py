"""The schemas of the commands beside training: launch/chat.py, launch/eval.py,
launch/export.py, launch/improve.py and launch/serve.py. Defaults here are the only ones,
as in schema.py."""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from framework.config.schema import DEFAULT_CACHE_DIR, DEFAULT_HELD_OUT, LoggerConfig


@dataclass
class ChatConfig:
    """launch/chat.py (launch/conf/chat.yaml)."""

    # Any MODEL_FORMS, e.g. outputs/tiny-sft/hf or smollm2_135m.
    model: str = MISSING
    # Answer this one message and exit (for scripts); None: interactive.
    prompt: str | None = None
    # A system message that opens every conversation (kept by /reset).
    system: str | None = None
    max_new_tokens: int = 256
    # 0: greedy decoding; above 0: sampling at this temperature within top_p.
    temperature: float = 0.0
    top_p: float = 1.0
    trust_remote_code: bool = False
    cache_dir: str = DEFAULT_CACHE_DIR
    # auto: cuda when available, else cpu; or a torch device such as cuda:1.
    device: str = "auto"
    # auto: as trainer.precision=auto chooses (framework/model/precision.py); or fp32,
    # bf16, fp16.
    dtype: str = "auto"


@dataclass
class EvalConfig:
    """launch/eval.py (launch/conf/eval.yaml)."""

    # Any MODEL_FORMS (a run's hf/, a checkpoint, smollm2_135m, ...). Not needed for a
    # questions file whose every line carries its `prediction`.
    model: str | None = None
    # What to evaluate on (framework/eval/job.py):
    #   suite: the built-in task families' split (split=, per_family=);
    #   questions: the JSONL file path= names, one question per line: {"prompt": "..." or
    #     "messages": [...], "reference": "...", "task": "optional group", "prediction":
    #     "optional: an answer to score instead of generating one"};
    #   ifeval: IFEval's 541 prompts scored by the official checkers: path= the JSONL of
    #     the benchmark's repository, or no path for the hub's google/IFEval;
    #   lm_eval: lm-evaluation-harness tasks (tasks=) on the model's Hugging Face export
    #     with lm-eval's own `hf` backend; path= serves the ifeval task from that file.
    eval: str = "suite"
    path: str | None = None
    tasks: list[str] = field(default_factory=lambda: ["ifeval"])
    # The first `limit` prompts only (questions, ifeval, lm_eval), for a quick look.
    limit: int | None = None
    # The suite's split to answer: test (final numbers) or validation.
    split: str = "test"
    per_family: int = 50
    # Which families count as held out, and the suite's seed. null: the training run's
    # (its config.yaml, found beside the model), else the suite's defaults.
    held_out: list[str] | None = None
    seed: int | None = None
    # null: the benchmark's own: 64 for suite and questions, 1280 for ifeval (lm-eval's
    # protocol), the task's own for lm_eval.
    max_new_tokens: int | None = None
    batch_size: int = 32
    # Where eval.json and the wandb run go; null: `<model>-eval` beside the model
    # (`<model>-<eval>` for every eval but the suite).
    out: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    cache_dir: str = DEFAULT_CACHE_DIR
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(project="instruct-eval"))


@dataclass
class ExportConfig:
    """launch/export.py (launch/conf/export.yaml)."""

    # Any MODEL_FORMS: a step_* checkpoint or run.checkpoint_dir (its newest committed
    # one), a .gguf file or preset to convert, a Hugging Face directory to copy.
    model: str = MISSING
    # The Hugging Face model directory to write (format=gguf: the .gguf file).
    out: str = MISSING
    # hf: a Hugging Face directory; gguf: one GGUF file (llama.cpp, Ollama) of the Llama
    # family in gguf_type (f32, f16, bf16 or q8_0), with an Ollama Modelfile beside it.
    format: str = "hf"
    gguf_type: str = "f16"
    trust_remote_code: bool = False
    cache_dir: str = DEFAULT_CACHE_DIR


@dataclass
class ImproveConfig:
    """launch/improve.py (launch/conf/improve.yaml): rounds of preference tuning on the
    model's own answers to the suite's training prompts, checked by the suite's checkers."""

    # The model to improve: any MODEL_FORMS, e.g. outputs/smollm2-sft/hf.
    model: str = MISSING
    # Where each round's pairs, training run and evaluation go, and rounds.jsonl.
    out: str = "outputs/improve"
    rounds: int = 2
    # Prompts per trained family each round (train split; new ones every round), and the
    # answers sampled for each.
    prompts_per_family: int = 16
    samples: int = 4
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 32
    # Families never trained on, so their accuracy after each round measures transfer.
    held_out: list[str] = field(default_factory=lambda: list(DEFAULT_HELD_OUT))
    # Each round's evaluation: this many validation items of every family, greedy.
    eval_per_family: int = 20
    # Overrides of each round's training run (launch/train.py), after model and data.
    train: list[str] = field(default_factory=lambda: ["objective=dpo"])
    # A conversation log (launch/serve.py log_dir=...): its users' ratings, as preference
    # pairs (framework/data/feedback.py), join every round's training data. null: none.
    feedback: str | None = None
    # Ray tasks that sample, and their CPUs; the cluster to sample on (None: a local Ray).
    workers: int = 2
    cpus_per_worker: int = 1
    address: str | None = None
    seed: int = 0
    cache_dir: str = DEFAULT_CACHE_DIR
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(project="instruct-improve"))


@dataclass
class ServeConfig:
    """launch/serve.py (launch/conf/serve.yaml): an OpenAI-compatible HTTP server."""

    # Any MODEL_FORMS (a run's hf/, a checkpoint, smollm2_135m, a .gguf file, ...).
    model: str = MISSING
    # The name clients give as `model` and /v1/models lists; null: `model` as given.
    name: str | None = None
    # 127.0.0.1 serves this machine only; another address (0.0.0.0) needs a key.
    host: str = "127.0.0.1"
    port: int = 8000
    # The bearer key every request but /health must send (Authorization: Bearer <key>);
    # null: the SERVE_API_KEY environment variable, else no key (127.0.0.1 only).
    api_key: str | None = None
    # Limits, each refused with its own HTTP status and message: a request body's bytes
    # (413); a reply's tokens (400 above it; a request without max_tokens gets it); prompt
    # plus reply tokens (400; null: the model's context); requests in flight (429).
    max_request_bytes: int = 1_000_000
    max_tokens: int = 512
    max_model_len: int | None = None
    max_concurrent: int = 32
    # Concurrent requests decode together in one batch (transformers' continuous batching
    # with paged attention); false: one request at a time.
    continuous_batching: bool = True
    # A request's temperature and top_p are honoured (OpenAI's default: it samples unless
    # it sends temperature 0). false: every reply greedy, and a request asking to sample
    # refused (400); with continuous batching, a little faster (results/serve.md): no
    # request pays for the sampling steps (top-k, top-p) every decoded token goes through.
    sampling: bool = True
    # The share of the device's free memory continuous batching takes for its KV cache and
    # working tensors, allocated at start; null: 0.9 on a GPU (transformers' default) and
    # 0.1 on a CPU, where transformers would take 0.6 of the machine's RAM.
    cache_memory_share: float | None = None
    # The conversation log: null, off; a directory, where each exchange is appended to
    # conversations.jsonl and each rating (POST /v1/feedback) to feedback.jsonl, secrets
    # redacted, and where records older than log_retention_days are deleted (at start and
    # daily). Nothing is sent anywhere. Prepare reads it as preference pairs
    # (data.sources: [{path: <dir>, format: feedback}]).
    log_dir: str | None = None
    log_retention_days: int = 30
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    cache_dir: str = DEFAULT_CACHE_DIR
