"""The evaluation job behind launch/eval.py: a model (any form framework/hf/resolve.py
accepts) answers, greedily, the suite's test split or a user's JSONL of prompts with
references (scored per task family and for trained vs held-out families), or IFEval's
prompts (judged by the official checkers), or runs lm-eval tasks on its export. Each prints
a table (worst first), writes eval.json and logs to wandb."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.config.command_checks import NO_EVAL_MODEL
from framework.config.commands import EvalConfig
from framework.config.saved import load_train_config
from framework.config.schema import ConfigError, SuiteConfig
from framework.data.sources import trains_on_suite
from framework.eval import ifeval
from framework.eval.questions import (
    Question,
    answer_and_score,
    file_questions,
    score_answers,
    suite_questions,
)
from framework.eval.scoring import examples_worst_first, flat_metrics, format_table
from framework.hf.local import load_for_inference
from framework.run.files import CONFIG_FILE, EVAL_FILE, write_json
from framework.suite.build import eval_items, trained_families
from framework.suite.families import FAMILIES
from framework.tracking.tracker import log_evaluation

# Replies to the suite's and a questions file's questions are short.
QUESTION_MAX_NEW_TOKENS = 64


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
            return (trained.data.suite if trains_on_suite(trained.data) else None), candidate
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
    named = cfg.path if cfg.model is None else cfg.model
    suffix = "eval" if cfg.eval == "suite" else cfg.eval
    return Path(f"{Path(named).resolve()}-{suffix}")


def run_eval(cfg: EvalConfig) -> dict:
    """Answer (unless a questions file gives every prediction), score, print, write
    eval.json and log to wandb. Returns eval.json's content."""
    run = {"suite": _questions, "questions": _questions, "ifeval": _ifeval, "lm_eval": _lm_eval}
    result, metrics, tables = run[cfg.eval](cfg)
    result = {
        "model": None if cfg.model is None else str(Path(cfg.model).resolve()),
        "eval": cfg.eval,
        "path": cfg.path,
        **result,
    }
    out = output_dir(cfg)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / EVAL_FILE, result)
    if cfg.logger.backend == "wandb":
        name = f"{cfg.eval}-{Path(cfg.model or cfg.path).resolve().parent.name}"
        log_evaluation(cfg.logger, name, out, dataclasses.asdict(cfg), metrics, tables)
    return result


def _questions(cfg: EvalConfig) -> tuple[dict, dict, dict]:
    """The suite's split or a questions file: (eval.json's part, summary metrics, tables)."""
    if cfg.eval == "suite":
        questions, held_out_line = suite_questions_for(cfg)
        print(held_out_line, flush=True)
    else:
        questions = file_questions(cfg.path)[: cfg.limit]
    if all(q.prediction is not None for q in questions):
        print(f"scoring the {len(questions)} predictions in {cfg.path}", flush=True)
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
            max_new_tokens=cfg.max_new_tokens or QUESTION_MAX_NEW_TOKENS,
            batch_size=cfg.batch_size,
            progress=True,
        )
    print(format_table(summary), flush=True)
    answers = examples_worst_first(scored, summary)
    result = {"split": cfg.split if cfg.eval == "suite" else None, "summary": summary}
    return {**result, "answers": answers}, flat_metrics(summary, "eval"), {"answers": answers}


def _ifeval(cfg: EvalConfig) -> tuple[dict, dict, dict]:
    prompts = ifeval.load_prompts(cfg.path, cfg.limit)
    model, tokenizer = load_for_eval(cfg)
    max_new_tokens = cfg.max_new_tokens or ifeval.MAX_NEW_TOKENS
    print(
        f"IFEval: {len(prompts)} prompts ({cfg.path or ifeval.HUB_DATASET}), greedy replies "
        f"of up to {max_new_tokens} tokens from {cfg.model} on {model.device}",
        flush=True,
    )
    started = time.perf_counter()
    summary, judged = ifeval.run_ifeval(
        model,
        tokenizer,
        prompts,
        max_new_tokens=max_new_tokens,
        batch_size=cfg.batch_size,
        progress=True,
    )
    summary["seconds"] = round(time.perf_counter() - started, 1)
    print(ifeval.format_table(summary, judged), flush=True)
    print(f"{len(prompts)} prompts in {summary['seconds']:.0f} s", flush=True)
    replies = ifeval.judged_rows(judged, summary)
    metrics = ifeval.flat_metrics(summary, "ifeval")
    return {"summary": summary, "replies": replies}, metrics, {"replies": replies}


def _lm_eval(cfg: EvalConfig) -> tuple[dict, dict, dict]:
    from framework.eval.harness import run_lm_eval

    results, samples = run_lm_eval(cfg)
    metrics = {
        f"lm_eval/{task}/{name}": value
        for task, values in results.items()
        for name, value in values.items()
        if isinstance(value, int | float)
    }
    return {"results": results, "samples": samples}, metrics, samples
