"""The evaluation job behind launch/eval.py: a model (a Hugging Face directory or a
checkpoint) answers the suite's test split, or a user's JSONL of prompts with references,
greedily; the answers are scored per task family and for trained vs held-out families,
printed as a table (worst families first), written to eval.json and logged to wandb."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.config.checks import NO_EVAL_MODEL
from framework.config.saved import load_train_config
from framework.config.schema import ConfigError, EvalConfig, SuiteConfig
from framework.eval.questions import (
    Question,
    answer_and_score,
    file_questions,
    score_answers,
    suite_questions,
)
from framework.eval.scoring import examples_worst_first, format_table
from framework.model.local import load_for_inference
from framework.run_dir import CONFIG_FILE, EVAL_FILE, write_json
from framework.suite.build import eval_items, trained_families
from framework.suite.families import FAMILIES
from framework.tracking import log_evaluation


def load_for_eval(cfg: EvalConfig) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model and tokenizer cfg.model names (a run's hf/, a checkpoint, a preset, ...)."""
    if cfg.model is None:
        raise ConfigError(NO_EVAL_MODEL)
    return load_for_inference(cfg)


def training_suite(model: str) -> tuple[SuiteConfig | None, Path | None]:
    """The suite settings of the run that trained `model` (its config.yaml: in the
    checkpoint, or in the run directory above hf/ or checkpoints/), when it trained on the
    suite; (None, where) when it trained on other data; (None, None) when none is found."""
    path = Path(model).resolve()
    if not path.exists():  # a preset or hub id: no training run
        return None, None
    for candidate in (path / CONFIG_FILE, path.parent / CONFIG_FILE, path.parents[1] / CONFIG_FILE):
        if candidate.is_file():
            trained = load_train_config(candidate)
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
    write_json(out / EVAL_FILE, result)
    if cfg.logger.backend == "wandb":
        name = f"eval-{Path(cfg.model or cfg.eval).resolve().parent.name}"
        log_evaluation(cfg.logger, name, out, dataclasses.asdict(cfg), result)
    return result
