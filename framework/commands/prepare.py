"""Driver-side preparation, before any worker starts: checks that fail fast, the resolved
config, the tokenizer and the preprocessed data artifact. The run directory records where
the artifact is, so every worker (on any node sharing the paths) reads the same rows."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from framework.config.saved import save_train_config
from framework.config.schema import TrainConfig
from framework.data import cache, identity
from framework.data.curate.references import file_texts
from framework.data.formats import ErrorPolicy
from framework.data.inspect import inspect_example
from framework.data.loader import micro_steps_per_epoch
from framework.data.pack import PackingPlan
from framework.data.parallel import LocalMapper
from framework.data.preference import PreferencePair
from framework.data.prompt_artifact import prompts_file, write_prompt_artifact
from framework.data.prompts import PromptSet, load_prompts, read_prompts
from framework.data.sources import LoadedData, LoadedRecord, load_data
from framework.data.templates import apply_template_choice
from framework.eval import ifeval
from framework.eval.verifiers import VERIFIERS
from framework.hf.resolve import model_source
from framework.model.build import check_model_source
from framework.model.tokenizer import cached_bpe, pretrained_tokenizer
from framework.run.files import (
    CONFIG_FILE,
    DATASET_POINTER,
    IFEVAL_PROMPTS_FILE,
    INSPECT_FILE,
    STATS_FILE,
    TOKENIZER_DIR,
    write_json,
)
from framework.train.rollouts import prompt_ids


@dataclasses.dataclass
class Prepared:
    cfg: TrainConfig  # the run's config as the workers get it (sized, paths fetched)
    artifact: Path
    stats: dict
    inspected: list[dict]
    removed: list[dict]  # data.curate.show records per reason (cache.removed_records)


def _corpus(data: LoadedData):
    for record in data.train:
        found = record.conversation
        pair = isinstance(found, PreferencePair)
        for conversation in (found.chosen, found.rejected) if pair else (found,):
            if conversation.text is not None:
                yield conversation.text
            yield from (message["content"] for message in conversation.messages)


def _tokenizer(
    cfg: TrainConfig, data: LoadedData | None, texts: list[str] | None = None
) -> PreTrainedTokenizerBase:
    if cfg.model.name_or_path is None:
        corpus = texts if texts is not None else list(_corpus(data))
        tokenizer = cached_bpe(corpus, cfg.model.vocab_size, cfg.run.cache_dir)
    else:
        tokenizer = pretrained_tokenizer(model_source(cfg), cfg.model.trust_remote_code)
    apply_template_choice(tokenizer, cfg.data.chat_template)
    return tokenizer


def reference_files(cfg: TrainConfig) -> tuple[str, ...]:
    """Evaluation files of the run besides data.curate.decontaminate_files: IFEval's,
    when the run scores it from a file (the hub's copy is not read at preparation)."""
    scored = cfg.eval.ifeval_prompts != 0 and cfg.eval.ifeval_path
    return (cfg.eval.ifeval_path,) if scored else ()


def mapper_for(cfg: TrainConfig):
    """A context giving the Mapper that data.preprocess names (auto: Ray tasks for large
    inputs when the run joins a cluster, local processes otherwise)."""
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    mode, local = cfg.data.preprocess, LocalMapper(cfg.data.num_proc or os.cpu_count() or 1)
    if mode == "ray" or (mode == "auto" and address):
        from framework.cluster.ray_preprocess import ray_mapper

        return ray_mapper(address, small=local if mode == "auto" else None)
    return contextlib.nullcontext(local)


def prepare_data(cfg: TrainConfig) -> tuple[PreTrainedTokenizerBase, Path, LoadedData | None]:
    """The tokenizer and the artifact directory, built unless an identical one exists, with
    its identity.json (data/identity.py). Sources are read only when needed: to build, or
    to train the built-in tokenizer."""
    policy = ErrorPolicy(cfg.data.on_error)
    built_in = cfg.model.name_or_path is None
    seed, pairs, files = cfg.trainer.seed, cfg.objective.pairs, reference_files(cfg)
    with mapper_for(cfg) as mapper:
        load = functools.partial(
            load_data, cfg.data, seed, policy, pairs, mapper=mapper, reference_files=files
        )
        data = load() if built_in else None
        tokenizer = _tokenizer(cfg, data)
        found = cache.artifact_identity(cfg.data, tokenizer, seed, pairs, files)
        key = cache.digest(found)
        artifact = Path(cfg.run.cache_dir) / "datasets" / key[:20]
        if not artifact.is_dir():
            data = data or load()
            cache.build_artifact(artifact, data, tokenizer, cfg.data, policy, seed, pairs, mapper)
        identity.write(artifact, identity.summarize(found, cfg.data, key, files))
    return tokenizer, artifact, data


def prepare_prompts(cfg: TrainConfig) -> tuple[PreTrainedTokenizerBase, Path, dict]:
    """objective=grpo: the tokenizer, and the prompts artifact (prompts_train.jsonl,
    prompts_eval.jsonl, stats and identity), built unless an identical one exists. Prompts
    are decontaminated against data.curate.decontaminate_files and the run's IFEval file."""
    policy = ErrorPolicy(cfg.data.on_error)
    files = (*cfg.data.curate.decontaminate_files, *reference_files(cfg))

    def load() -> PromptSet:
        return load_prompts(
            cfg.data, cfg.trainer.seed, verifiers=VERIFIERS, contamination=file_texts(files),
            policy=policy,
        )  # fmt: skip

    prompts = load() if cfg.model.name_or_path is None else None
    corpus = [m["content"] for p in prompts.train for m in p.messages] if prompts else []
    tokenizer = _tokenizer(cfg, None, corpus)
    found = {**cache.artifact_identity(cfg.data, tokenizer, cfg.trainer.seed, False, files),
             "kind": "prompts"}  # fmt: skip
    key = cache.digest(found)
    artifact = Path(cfg.run.cache_dir) / "datasets" / f"prompts-{key[:20]}"
    if not artifact.is_dir():
        prompts = prompts or load()
        write_prompt_artifact(artifact, prompts)
    identity.write(artifact, identity.summarize(found, cfg.data, key, files))
    return tokenizer, artifact, cache.load_stats(artifact)


def prepare_run(cfg: TrainConfig) -> Prepared:
    """Write config.yaml, tokenizer/, dataset.json (the artifact's path) and data_stats.json
    under `run.output_dir`, and check the data fills at least one step. `cfg` is left as
    given: Prepared.cfg is the run's config (sized, IFEval's prompts fetched)."""
    check_model_source(cfg, model_source(cfg))
    out = Path(cfg.run.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.eval.ifeval_prompts and cfg.eval.ifeval_path is None:
        # Before the data, which is decontaminated against it.
        path = str(ifeval.save_hub_prompts(out / IFEVAL_PROMPTS_FILE))
        cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, ifeval_path=path))
    if cfg.objective.online:
        (tokenizer, artifact, stats), data = prepare_prompts(cfg), None
    else:
        tokenizer, artifact, data = prepare_data(cfg)
        stats = cache.load_stats(artifact)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    write_json(out / DATASET_POINTER, {"path": str(artifact)})
    write_json(out / STATS_FILE, stats)
    if cfg.objective.online:
        cfg = size_rollouts(cfg, tokenizer, artifact)
    else:
        cfg = size_the_run(cfg, stats, cache.first_plan(artifact))
    save_train_config(cfg, out / CONFIG_FILE)
    inspected = []
    if cfg.data.inspect and not cfg.objective.online:
        if data is None:
            data = load_data(
                cfg.data,
                cfg.trainer.seed,
                ErrorPolicy("skip"),
                cfg.objective.pairs,
                reference_files=reference_files(cfg),
            )
        inspected = [
            shown
            for record in data.train[: cfg.data.inspect]
            for shown in _inspected(tokenizer, record, cfg.data.train_on)
        ]
        write_json(out / INSPECT_FILE, inspected)
    removed = shown_removals(artifact, cfg.data.curate.show)
    return Prepared(cfg, artifact, stats, inspected, removed)


def shown_removals(artifact: Path, per_reason: int) -> list[dict]:
    """The first `per_reason` removals of each reason, in priority order."""
    shown: list[dict] = []
    counts: dict[str, int] = {}
    for removal in cache.removed_records(artifact) if per_reason else []:
        counts[removal["reason"]] = counts.get(removal["reason"], 0) + 1
        if counts[removal["reason"]] <= per_reason:
            shown.append(removal)
    return shown


def _inspected(tokenizer, record: LoadedRecord, train_on: str) -> list[dict]:
    """inspect_example of a record: of both sequences for a preference pair."""
    found = record.conversation
    if not isinstance(found, PreferencePair):
        return [inspect_example(tokenizer, found, train_on, record.where)]
    return [
        inspect_example(tokenizer, sequence, "assistant", f"{record.where} ({label})")
        for label, sequence in (("chosen", found.chosen), ("rejected", found.rejected))
    ]


def size_rollouts(cfg: TrainConfig, tokenizer, artifact: Path) -> TrainConfig:
    """grpo: trainer.grad_accum_steps raised where needed so that a micro batch holds about
    trainer.micro_batch_size rows of data.max_seq_len, as in SFT: a rank's round (its
    completions after their prompts, of the prompts' mean length and at most
    rollout.max_new_tokens) is packed into grad_accum_steps micro batches, and activations
    grow with the rows of one."""
    rollout, trainer = cfg.rollout, cfg.trainer
    prompts = read_prompts(prompts_file(artifact, "train"))
    mean = sum(len(prompt_ids(tokenizer, p.messages)) for p in prompts) / max(len(prompts), 1)
    groups = math.ceil(rollout.batch_completions / rollout.group_size / cfg.cluster.num_workers)
    tokens = groups * rollout.group_size * (mean + rollout.max_new_tokens)
    rows = math.ceil(tokens / cfg.data.max_seq_len)
    needed = math.ceil(rows / trainer.micro_batch_size)
    if needed <= trainer.grad_accum_steps:
        return cfg
    print(
        f"trainer.grad_accum_steps={needed} (was {trainer.grad_accum_steps}): a rank's round "
        f"packs into about {rows} rows of data.max_seq_len={cfg.data.max_seq_len}, "
        f"trainer.micro_batch_size={trainer.micro_batch_size} rows per micro batch",
        flush=True,
    )
    return dataclasses.replace(cfg, trainer=dataclasses.replace(trainer, grad_accum_steps=needed))


def size_the_run(cfg: TrainConfig, stats: dict, plan: PackingPlan | None) -> TrainConfig:
    """A copy of `cfg` with trainer.global_batch_tokens / _examples turned into
    grad_accum_steps and trainer.epochs into max_steps, as the workers get it (the composed
    config stays as it was given); fails when the data cannot fill one step."""
    trainer, workers = cfg.trainer, cfg.data_workers
    rows = len(plan) if plan is not None else stats["examples"]
    micro_steps = micro_steps_per_epoch(rows, trainer.micro_batch_size, workers)
    per_micro_step = {
        "tokens": stats["tokens"] / rows * trainer.micro_batch_size * workers,
        "examples": stats["examples"] / rows * trainer.micro_batch_size * workers,
    }
    sized = {}
    for unit, target in (
        ("tokens", trainer.global_batch_tokens),
        ("examples", trainer.global_batch_examples),
    ):
        if target is not None:
            sized["grad_accum_steps"] = max(1, round(target / per_micro_step[unit]))
    if trainer.epochs is not None:
        accumulation = sized.get("grad_accum_steps", trainer.grad_accum_steps)
        sized["max_steps"] = max(1, math.ceil(trainer.epochs * micro_steps / accumulation))
    return dataclasses.replace(cfg, trainer=dataclasses.replace(trainer, **sized))
