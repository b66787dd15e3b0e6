"""Evaluation during training, on every rank together: the eval split's loss (for a
preference objective: its pairs' loss, rewards and log-probs) and greedy samples, greedy
answers to a sample of the suite's validation items, scored for the
trained and held-out families, and optionally replies to a sample of IFEval's prompts."""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from framework.config.schema import TrainConfig
from framework.data.cache import load_stats
from framework.data.sources import trains_on_suite
from framework.eval import ifeval
from framework.eval.eval_set import EvalSet, eval_loss, greedy_samples
from framework.eval.questions import Question, answer_and_score, suite_questions
from framework.eval.scoring import examples_worst_first, flat_metrics
from framework.loss.preference import metric_sums, metrics_of, pair_terms, split_logps
from framework.loss.token import token_loss_fn
from framework.suite.build import eval_items, trained_families
from framework.suite.families import FAMILIES


def suite_sample(cfg: TrainConfig) -> list[Question]:
    """eval.suite_per_family validation items of every suite family; trained and
    held-out families are told apart when the run trains on the suite."""
    per_family = cfg.eval.suite_per_family
    if not per_family:
        return []
    items = eval_items(list(FAMILIES), "validation", per_family, cfg.data.suite.seed)
    suite = cfg.data.suite
    split = (trained_families(suite), suite.held_out) if trains_on_suite(cfg.data) else None
    return suite_questions(items, split)


def ifeval_sample(cfg: TrainConfig) -> list[ifeval.IFEvalPrompt]:
    """eval.ifeval_prompts IFEval prompts, the same ones at every evaluation and in
    every run (a seeded sample, in key order)."""
    count = cfg.eval.ifeval_prompts
    if not count:
        return []
    prompts = ifeval.load_prompts(cfg.eval.ifeval_path)
    chosen = random.Random(0).sample(prompts, min(count, len(prompts)))
    return sorted(chosen, key=lambda p: p.key)


@dataclass
class TrainingEval:
    """What the loop evaluates: the artifact's eval split (None when it has no examples),
    a sample of the suite's validation items and one of IFEval's prompts."""

    evalset: EvalSet | None
    questions: list[Question]
    ifeval_prompts: list[ifeval.IFEvalPrompt]
    # Preference objectives with a reference: the eval pairs' reference log-probs.
    reference: np.ndarray | None = None

    @classmethod
    def load(
        cls, cfg: TrainConfig, artifact: Path, reference: np.ndarray | None = None
    ) -> TrainingEval:
        # grpo's artifact holds prompts, no eval loss: the suite and IFEval still score it.
        online = cfg.objective.online
        evalset = None if online else EvalSet.load(artifact, load_stats(artifact)["source_names"])
        return cls(evalset, suite_sample(cfg), ifeval_sample(cfg), reference)

    @property
    def enabled(self) -> bool:
        return self.evalset is not None or bool(self.questions) or bool(self.ifeval_prompts)


@contextlib.contextmanager
def _timed(times: dict[str, float], part: str) -> Iterator[None]:
    """Rank 0's wall time of one part of an evaluation, as eval_time/<part>_s."""
    began = time.perf_counter()
    yield
    times[f"eval_time/{part}_s"] = time.perf_counter() - began


def pair_eval(
    engine, evalset, reference: np.ndarray | None, cfg, *, rank: int, world: int, pad_id, device
) -> dict[str, float]:
    """Collective. The eval split's pairs through `engine`: eval_loss (the objective's mean
    over them) and eval_rewards/..., eval_logps/..., in the reference pass's layout (at
    step 0 the rewards are then 0 to the bit)."""
    policy, counts = split_logps(
        token_loss_fn(engine, cfg.loss),
        evalset.dataset,
        rows_per_batch=cfg.trainer.micro_batch_size,
        max_seq_len=cfg.data.max_seq_len,
        rank=rank,
        world=world,
        pad_id=pad_id,
        device=device,
    )
    policy, counts = torch.from_numpy(policy), torch.from_numpy(counts)
    ref = torch.from_numpy(reference) if reference is not None else None
    terms = pair_terms(cfg.objective, policy, counts, ref)
    return {"eval_loss": terms.losses.mean().item()} | metrics_of(
        metric_sums(terms, policy), prefix="eval_"
    )


def _eval_split(engine, tokenizer, inputs: TrainingEval, cfg: TrainConfig, **where) -> dict:
    """Collective: the eval split's loss, or its pairs' loss, rewards and log-probs."""
    if cfg.objective.pairs:
        return pair_eval(
            engine, inputs.evalset, inputs.reference, cfg, pad_id=tokenizer.pad_token_id, **where
        )
    return eval_loss(
        token_loss_fn(engine, cfg.loss),
        inputs.evalset,
        micro_batch_size=cfg.trainer.micro_batch_size,
        pad_id=tokenizer.pad_token_id,
        **where,
    )


def evaluate(
    engine,
    tokenizer: PreTrainedTokenizerBase,
    inputs: TrainingEval,
    cfg: TrainConfig,
    *,
    rank: int,
    world_size: int,
    device: torch.device,
) -> tuple[dict, list[dict], list[dict]]:
    """Collective. (metrics, greedy samples, scored suite answers worst first): eval loss
    on every rank together, then greedy samples (on all ranks under ZeRO-3, where
    generating needs every rank's weights; on rank 0 otherwise), then the suite's
    questions and the IFEval prompts shared out over the ranks."""
    engine.module.eval()
    synced = cfg.parallelism.zero_stage == 3
    evalset, questions = inputs.evalset, inputs.questions
    metrics, samples, answers, times = {}, [], [], {}
    if evalset is not None:
        # Split over sequence-parallel groups: a group's workers share each row's forward
        # (its generation, below, is each worker's own).
        size = cfg.parallelism.sequence_parallel
        where = {"rank": rank // size, "world": world_size // size, "device": device}
        with _timed(times, "loss"):
            metrics = _eval_split(engine, tokenizer, inputs, cfg, **where)
        with _timed(times, "samples"):
            if synced or rank == 0:
                samples = greedy_samples(
                    engine.module,
                    tokenizer,
                    evalset,
                    count=cfg.eval.samples,
                    max_new_tokens=cfg.eval.max_new_tokens,
                    synced=synced,
                    device=device,
                    every=2 if cfg.objective.pairs else 1,
                )
    # How the suite's questions and IFEval's prompts are shared out and generated.
    shared = {"rank": rank, "world": world_size, "batch_size": cfg.eval.batch_size}
    shared["synced"] = synced
    if questions:
        with _timed(times, "suite"):
            summary, scored = answer_and_score(
                engine.module,
                tokenizer,
                questions,
                max_new_tokens=cfg.eval.max_new_tokens,
                **shared,
            )
        if rank == 0:
            metrics |= flat_metrics(summary, "suite")
            answers = examples_worst_first(scored, summary)
    if inputs.ifeval_prompts:
        with _timed(times, "ifeval"):
            summary, _ = ifeval.run_ifeval(
                engine.module,
                tokenizer,
                inputs.ifeval_prompts,
                max_new_tokens=cfg.eval.ifeval_max_new_tokens,
                **shared,
            )
        if rank == 0:
            metrics |= ifeval.flat_metrics(summary, "ifeval")
    if rank == 0:
        metrics |= times
    engine.module.train()
    return metrics, samples, answers
