"""Evaluation during training, on every rank together: the eval split's loss and greedy
samples, and greedy answers to a sample of the suite's validation items, scored for the
trained and held-out families."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from framework.config.schema import TrainConfig
from framework.data.cache import load_stats
from framework.eval.eval_set import EvalSet, eval_loss, greedy_samples
from framework.eval.questions import Question, answer_and_score, suite_questions
from framework.eval.scoring import examples_worst_first, flat_metrics
from framework.model.attention import packed_logits
from framework.suite.build import eval_items, trained_families
from framework.suite.families import FAMILIES


def suite_sample(cfg: TrainConfig) -> list[Question]:
    """trainer.eval_suite_per_family validation items of every suite family; trained and
    held-out families are told apart when the run trains on the suite."""
    per_family = cfg.trainer.eval_suite_per_family
    if not per_family:
        return []
    items = eval_items(list(FAMILIES), "validation", per_family, cfg.data.suite.seed)
    suite = cfg.data.suite
    split = None if cfg.data.sources else (trained_families(suite), suite.held_out)
    return suite_questions(items, split)


@dataclass
class TrainingEval:
    """What the loop evaluates: the artifact's eval split (None when it has no examples)
    and a sample of the suite's validation items."""

    evalset: EvalSet | None
    questions: list[Question]

    @classmethod
    def load(cls, cfg: TrainConfig, artifact: Path) -> TrainingEval:
        evalset = EvalSet.load(artifact, load_stats(artifact)["source_names"])
        return cls(evalset, suite_sample(cfg))

    @property
    def enabled(self) -> bool:
        return self.evalset is not None or bool(self.questions)


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
    questions shared out over the ranks."""
    engine.module.eval()
    synced = cfg.parallelism.zero_stage == 3
    evalset, questions = inputs.evalset, inputs.questions
    metrics, samples, answers = {}, [], []
    if evalset is not None:
        metrics = eval_loss(
            packed_logits(engine),
            evalset,
            micro_batch_size=cfg.trainer.micro_batch_size,
            rank=rank,
            world=world_size,
            pad_id=tokenizer.pad_token_id,
            device=device,
        )
        if synced or rank == 0:
            samples = greedy_samples(
                engine.module,
                tokenizer,
                evalset,
                count=cfg.trainer.eval_samples,
                max_new_tokens=cfg.trainer.eval_max_new_tokens,
                synced=synced,
                device=device,
            )
    if questions:
        summary, scored = answer_and_score(
            engine.module,
            tokenizer,
            questions,
            rank=rank,
            world=world_size,
            max_new_tokens=cfg.trainer.eval_max_new_tokens,
            batch_size=cfg.trainer.eval_batch_size,
            synced=synced,
        )
        if rank == 0:
            metrics |= flat_metrics(summary, "suite")
            answers = examples_worst_first(scored, summary)
    engine.module.train()
    return metrics, samples, answers
