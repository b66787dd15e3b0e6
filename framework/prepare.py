"""Driver-side preparation, before any worker starts: checks that fail fast, the resolved
config, the tokenizer and the preprocessed data artifact. The run directory records where
the artifact is, so every worker (on any node sharing the paths) reads the same rows."""

from __future__ import annotations

import dataclasses
import json
import math
import socket
from pathlib import Path

from omegaconf import OmegaConf
from transformers import PreTrainedTokenizerBase

from framework.config import ConfigError, TrainConfig
from framework.data import cache
from framework.data.formats import ErrorPolicy
from framework.data.inspect import inspect_example
from framework.data.loader import micro_steps_per_epoch
from framework.data.pack import PackingPlan
from framework.data.sources import LoadedData, load_data
from framework.data.templates import apply_template_choice
from framework.model import check_model_source
from framework.tokenizer import cached_bpe, pretrained_tokenizer

TOKENIZER_DIR = "tokenizer"
DATASET_POINTER = "dataset.json"
STATS_FILE = "data_stats.json"
INSPECT_FILE = "data_inspect.json"


@dataclasses.dataclass
class Prepared:
    artifact: Path
    stats: dict
    inspected: list[dict]


def _corpus(data: LoadedData):
    for record in data.train:
        if record.conversation.text is not None:
            yield record.conversation.text
        yield from (message["content"] for message in record.conversation.messages)


def _tokenizer(cfg: TrainConfig, data: LoadedData | None) -> PreTrainedTokenizerBase:
    if cfg.model.name_or_path is None:
        tokenizer = cached_bpe(list(_corpus(data)), cfg.model.vocab_size, cfg.run.cache_dir)
    else:
        tokenizer = pretrained_tokenizer(cfg.model)
    apply_template_choice(tokenizer, cfg.data.chat_template)
    return tokenizer


def prepare_data(cfg: TrainConfig) -> tuple[PreTrainedTokenizerBase, Path, LoadedData | None]:
    """The tokenizer and the artifact directory, built unless an identical one exists.
    Sources are read only when needed: to build, or to train the built-in tokenizer."""
    policy = ErrorPolicy(cfg.data.on_error)
    built_in = cfg.model.name_or_path is None
    data = load_data(cfg.data, cfg.trainer.seed, policy) if built_in else None
    tokenizer = _tokenizer(cfg, data)
    key = cache.fingerprint(cfg.data, tokenizer, cfg.trainer.seed)
    artifact = Path(cfg.run.cache_dir) / "datasets" / key[:20]
    if not artifact.is_dir():
        if data is None:
            data = load_data(cfg.data, cfg.trainer.seed, policy)
        cache.build_artifact(artifact, data, tokenizer, cfg.data, policy, cfg.trainer.seed)
    return tokenizer, artifact, data


def prepare_run(cfg: TrainConfig) -> Prepared:
    """Write config.yaml, tokenizer/, dataset.json (the artifact's path) and data_stats.json
    under `run.output_dir`, and check the data fills at least one step."""
    check_model_source(cfg.model)
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, artifact, data = prepare_data(cfg)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    stats = cache.load_stats(artifact)
    (out / DATASET_POINTER).write_text(json.dumps({"path": str(artifact)}))
    (out / STATS_FILE).write_text(json.dumps(stats, indent=2))
    size_the_run(cfg, stats, cache.first_plan(artifact))
    OmegaConf.save(OmegaConf.create(dataclasses.asdict(cfg)), out / "config.yaml")
    inspected = []
    if cfg.data.inspect:
        if data is None:
            data = load_data(cfg.data, cfg.trainer.seed, ErrorPolicy("skip"))
        inspected = [
            inspect_example(tokenizer, r.conversation, cfg.data.train_on, r.where)
            for r in data.train[: cfg.data.inspect]
        ]
        (out / INSPECT_FILE).write_text(json.dumps(inspected, indent=2, ensure_ascii=False))
    return Prepared(artifact, stats, inspected)


def size_the_run(cfg: TrainConfig, stats: dict, plan: PackingPlan | None) -> None:
    """Turn trainer.global_batch_tokens / _examples into grad_accum_steps and
    trainer.epochs into max_steps (in place, before the config goes to the workers);
    fail when the data cannot fill one step."""
    trainer, workers = cfg.trainer, cfg.cluster.num_workers
    rows = len(plan) if plan is not None else stats["examples"]
    micro_steps = micro_steps_per_epoch(rows, trainer.micro_batch_size, workers)
    per_micro_step = {
        "tokens": stats["tokens"] / rows * trainer.micro_batch_size * workers,
        "examples": stats["examples"] / rows * trainer.micro_batch_size * workers,
    }
    for unit, target in (
        ("tokens", trainer.global_batch_tokens),
        ("examples", trainer.global_batch_examples),
    ):
        if target is not None:
            trainer.grad_accum_steps = max(1, round(target / per_micro_step[unit]))
    if trainer.epochs is not None:
        trainer.max_steps = max(
            1, math.ceil(trainer.epochs * micro_steps / trainer.grad_accum_steps)
        )


def artifact_path(output_dir: str | Path) -> Path:
    """Where `prepare_run` recorded the data artifact for this run. A worker on a node that
    cannot see the driver's paths fails here, with the fix, rather than deep in a loader."""
    pointer = Path(output_dir) / DATASET_POINTER
    if not pointer.is_file():
        raise ConfigError(_not_shared("run.output_dir", pointer))
    artifact = Path(json.loads(pointer.read_text())["path"])
    if not artifact.is_dir():
        raise ConfigError(_not_shared("run.cache_dir", artifact))
    return artifact


def _not_shared(key: str, path: Path) -> str:
    return (
        f"{path} does not exist on node {socket.gethostname()}: the driver prepared it, but "
        f"this worker cannot see it; on a multi-node cluster set {key} to storage every node "
        "reads (a shared file system)"
    )
