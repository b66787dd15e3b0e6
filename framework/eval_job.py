"""The evaluation job behind launch/eval.py: a model (a Hugging Face directory or a
checkpoint) answers the suite's test split, or a user's JSONL of prompts with references,
greedily; the answers are scored per task family and for trained vs held-out families,
printed as a table (worst families first), written to eval.json and logged to wandb."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.chat import load_local_model
from framework.checkpoint import COMMIT_MARKER
from framework.config import ConfigError, LoggerConfig, SuiteConfig, trained_families
from framework.data.formats import DataError
from framework.data.templates import apply_template_choice
from framework.evaluate import Question, answer_and_score, score_answers, suite_questions
from framework.scoring import examples_worst_first, format_table
from framework.suite.build import check_family_names, eval_items
from framework.suite.families import FAMILIES
from framework.tracking import log_evaluation

EVAL_FILE = "eval.json"
RUN_CONFIG = "config.yaml"


@dataclass
class EvalConfig:
    # A Hugging Face model directory (a run's hf/), a step_* checkpoint, or a run's
    # checkpoint directory for its newest committed checkpoint. Not needed for a file
    # whose every line carries its `prediction`.
    model: str | None = None
    # "suite": the built-in task families; or a JSONL file, one question per line:
    # {"prompt": "..." or "messages": [...], "reference": "...", "task": "optional group",
    #  "prediction": "optional: an answer to score instead of generating one"}.
    eval: str = "suite"
    # The suite's split to answer: test (final numbers) or validation.
    split: str = "test"
    per_family: int = 50
    # Which families count as held out, and the suite's seed. null: the training run's
    # (its config.yaml, found beside the model), else the suite's defaults.
    held_out: list[str] | None = None
    seed: int | None = None
    max_new_tokens: int = 64
    batch_size: int = 32
    # Where eval.json and the wandb run go; null: `<model>-eval` beside the model.
    out: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    trust_remote_code: bool = False
    logger: LoggerConfig = field(default_factory=lambda: LoggerConfig(project="instruct-eval"))


def eval_config(raw: DictConfig) -> EvalConfig:
    """The composed Hydra config as a checked EvalConfig."""
    cfg: EvalConfig = OmegaConf.to_object(raw)
    check_eval_config(cfg)
    return cfg


_NO_MODEL = (
    "model: give the model to evaluate, e.g. model=outputs/tiny-sft/hf or "
    "model=outputs/tiny-sft/checkpoints"
)


def check_eval_config(cfg: EvalConfig) -> None:
    """Raise ConfigError naming the first key that cannot work."""
    if cfg.model is None and cfg.eval == "suite":
        raise ConfigError(_NO_MODEL)
    if cfg.split not in ("test", "validation"):
        raise ConfigError(f"split={cfg.split!r} is not one of ['test', 'validation']")
    for key in ("per_family", "max_new_tokens", "batch_size"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be > 0")
    if cfg.eval != "suite" and not Path(cfg.eval).is_file():
        raise ConfigError(
            f"eval={cfg.eval}: no such file; give eval=suite or a JSONL file of "
            '{"prompt": ..., "reference": ...} lines'
        )
    if cfg.held_out is not None:
        try:
            check_family_names(cfg.held_out, "held_out")
        except ValueError as err:
            raise ConfigError(str(err)) from None


def load_for_eval(cfg: EvalConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer at cfg.model: an exported directory, or a checkpoint."""
    if cfg.model is None:
        raise ConfigError(_NO_MODEL)
    path = Path(cfg.model)
    if (path / "config.json").is_file():
        return load_local_model(
            cfg.model, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        )
    if path.is_dir() and (
        path.name.startswith("step_") or any(path.glob(f"step_*/{COMMIT_MARKER}"))
    ):
        from framework import export  # imported late: DeepSpeed takes seconds to load

        model, tokenizer = export.load_checkpoint(export.find_checkpoint(path))
        apply_template_choice(tokenizer, None)
        device = "cuda" if cfg.device == "auto" and torch.cuda.is_available() else cfg.device
        return model.to("cpu" if device == "auto" else device), tokenizer
    raise ConfigError(
        f"model={cfg.model}: neither a model directory (no config.json) nor a checkpoint "
        "(no step_* with a COMMITTED marker); give a run's hf/, a step_* directory or "
        "run.checkpoint_dir"
    )


def training_suite(model: str) -> tuple[SuiteConfig | None, Path | None]:
    """The suite settings of the run that trained `model` (its config.yaml: in the
    checkpoint, or in the run directory above hf/ or checkpoints/), when it trained on the
    suite; (None, where) when it trained on other data; (None, None) when none is found."""
    path = Path(model)
    for candidate in (path / RUN_CONFIG, path.parent / RUN_CONFIG, path.parent.parent / RUN_CONFIG):
        if candidate.is_file():
            from framework.export import train_config

            trained = train_config(candidate)
            return (None if trained.data.sources else trained.data.suite), candidate
    return None, None


def suite_questions_for(cfg: EvalConfig) -> tuple[list[Question], str]:
    """The suite's questions and a line saying where the held-out families came from."""
    suite, found = training_suite(cfg.model)
    if found is None:
        suite, origin = SuiteConfig(), "the suite's defaults: no training config found"
    elif suite is None:
        origin = f"none: {found} trained on other data, so no family was trained on"
    else:
        origin = f"the training run's {found}"
    split = None if suite is None else (trained_families(suite), suite.held_out)
    if cfg.held_out is not None:
        trained = split[0] if split else list(FAMILIES)
        split = ([f for f in trained if f not in cfg.held_out], cfg.held_out)
        origin = "held_out= on the command line"
    seed = cfg.seed if cfg.seed is not None else (suite or SuiteConfig()).seed
    items = eval_items(list(FAMILIES), cfg.split, cfg.per_family, seed)
    held_out = None if split is None else list(split[1])
    return suite_questions(items, split), f"held-out families ({origin}): {held_out}"


def file_questions(path: str) -> list[Question]:
    """A JSONL file's questions; a bad line raises DataError naming file and line."""
    questions = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                questions.append(_question(line, f"{path}:{number}", Path(path).stem))
    if not questions:
        raise DataError(f"{path}: no questions; write one JSON object per line")
    return questions


def _question(line: str, where: str, default_task: str) -> Question:
    fix = (
        'each line must be {"prompt": "...", "reference": "..."} or {"messages": [...], '
        '"reference": "..."}, with an optional "task"'
    )
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        raise DataError(f"{where}: invalid JSON ({err.msg}); {fix}") from None
    if not isinstance(record, dict) or not isinstance(record.get("reference"), str):
        raise DataError(f"{where}: no string `reference`; {fix}")
    if isinstance(record.get("prompt"), str):
        chat = [{"role": "user", "content": record["prompt"]}]
    elif isinstance(record.get("messages"), list) and record["messages"]:
        chat = record["messages"]
        if not all(isinstance(m, dict) and {"role", "content"} <= m.keys() for m in chat):
            raise DataError(f"{where}: every message needs a role and a content; {fix}")
        if chat[-1]["role"] != "user":
            raise DataError(f"{where}: the messages must end with a user turn; {fix}")
    else:
        raise DataError(f"{where}: no `prompt` string or `messages` list; {fix}")
    prediction = record.get("prediction")
    if prediction is not None and not isinstance(prediction, str):
        raise DataError(f"{where}: `prediction` must be a string; {fix}")
    return Question(
        group=str(record.get("task", default_task)),
        chat=chat,
        reference=record["reference"],
        prediction=prediction,
    )


def output_dir(cfg: EvalConfig) -> Path:
    if cfg.out:
        return Path(cfg.out)
    if cfg.model is None:
        return Path(f"{Path(cfg.eval).resolve()}-eval")
    return Path(f"{Path(cfg.model).resolve()}-eval")


def run_eval(cfg: EvalConfig) -> dict:
    """Answer (unless the file gives every prediction), score, print, write eval.json and
    log to wandb. Returns eval.json's content."""
    if cfg.eval == "suite":
        questions, held_out_line = suite_questions_for(cfg)
        print(held_out_line, flush=True)
    else:
        questions = file_questions(cfg.eval)
    if all(q.prediction is not None for q in questions):
        print(f"scoring the {len(questions)} predictions in {cfg.eval}", flush=True)
        summary, scored = score_answers(questions, [q.prediction for q in questions])
    else:
        model, tokenizer = load_for_eval(cfg)
        print(
            f"answering {len(questions)} questions with {cfg.model} on {model.device}", flush=True
        )
        summary, scored = answer_and_score(
            model,
            tokenizer,
            questions,
            max_new_tokens=cfg.max_new_tokens,
            batch_size=cfg.batch_size,
        )
    print(format_table(summary), flush=True)
    result = {
        "model": None if cfg.model is None else str(Path(cfg.model).resolve()),
        "eval": cfg.eval,
        "split": cfg.split if cfg.eval == "suite" else None,
        "summary": summary,
        "answers": examples_worst_first(scored, summary),
    }
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / f".{EVAL_FILE}.tmp"
    staging.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    os.replace(staging, out / EVAL_FILE)
    if cfg.logger.backend == "wandb":
        name = f"eval-{Path(cfg.model or cfg.eval).resolve().parent.name}"
        log_evaluation(cfg.logger, name, out, dataclasses.asdict(cfg), result)
    return result
