"""Evaluation on the held-out split: exactly normalised loss and perplexity (overall and
per data source), greedy generations next to their references, and scored answers to
questions (the suite's task families, or a user's file) on any number of ranks."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.dataset import TokenizedDataset
from framework.data.pack import collate_rows
from framework.generate import Message, greedy_replies
from framework.loss import token_losses
from framework.scoring import Checker, Scored, score, summarize
from framework.suite.build import Item
from framework.suite.checkers import normalized_equal
from framework.suite.families import FAMILIES

Forward = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (ids, positions) -> logits


@dataclass
class EvalSet:
    dataset: TokenizedDataset
    source_ids: np.ndarray  # index into source_names, per example
    source_names: list[str]

    @classmethod
    def load(cls, artifact: str | Path, source_names: list[str]) -> EvalSet | None:
        """The artifact's eval split, or None when it has no examples."""
        dataset = TokenizedDataset.load(artifact, "eval")
        if len(dataset) == 0:
            return None
        return cls(dataset, np.load(Path(artifact) / "eval_source.npy"), source_names)


def rank_chunks(lengths: np.ndarray, micro_batch_size: int, rank: int, world: int) -> list:
    """This rank's micro batches of example indices (one example per row, similar lengths
    together). Every rank gets the same number, padded with empty ones, because ZeRO-3
    runs collectives inside every forward."""
    order = np.argsort(lengths, kind="stable")
    mine = order[rank::world]
    count = math.ceil(math.ceil(len(lengths) / world) / micro_batch_size)
    chunks = [mine[i * micro_batch_size : (i + 1) * micro_batch_size] for i in range(count)]
    return chunks


@torch.no_grad()
def eval_loss(
    forward: Forward,
    evalset: EvalSet,
    *,
    micro_batch_size: int,
    rank: int,
    world: int,
    pad_id: int,
    device: torch.device,
) -> dict[str, float]:
    """Collective. Weighted token loss summed over every eval example on every rank,
    divided by the summed weights: the same number whatever the number of ranks."""
    data = evalset.dataset
    sums = torch.zeros(len(evalset.source_names), 2, dtype=torch.float64, device=device)
    for chunk in rank_chunks(data.lengths(), micro_batch_size, rank, world):
        # A rank out of examples still runs a forward (on example 0, weighted 0).
        rows = [np.array([i]) for i in chunk] or [np.array([0])]
        batch = {
            k: v.to(device)
            for k, v in collate_rows(
                data.tokens, data.weights, data.offsets, rows, None, pad_id
            ).items()
        }
        weights = batch["loss_weights"][:, 1:].double()
        losses = token_losses(forward(batch["input_ids"], batch["position_ids"]), batch["labels"])
        for row, index in enumerate(chunk):
            source = int(evalset.source_ids[index])
            sums[source, 0] += (losses[row].double() * weights[row]).sum()
            sums[source, 1] += weights[row].sum()
    dist.all_reduce(sums)
    total = sums.sum(dim=0)
    loss = (total[0] / total[1].clamp_min(1e-12)).item()
    metrics = {"eval_loss": loss, "eval_ppl": math.exp(min(loss, 50.0))}
    if len(evalset.source_names) > 1:
        for name, (summed, weight) in zip(evalset.source_names, sums.tolist(), strict=True):
            if weight > 0:
                metrics[f"eval_loss/{name}"] = summed / weight
    return metrics


def _last_reply(tokens: np.ndarray, weights: np.ndarray) -> tuple[int, int]:
    """[start, end) of the last run of trained tokens."""
    trained = np.flatnonzero(weights > 0)
    end = int(trained[-1]) + 1
    gaps = np.flatnonzero(np.diff(trained) > 1)
    start = int(trained[gaps[-1] + 1]) if len(gaps) else int(trained[0])
    return start, end


@torch.no_grad()
def greedy_samples(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    evalset: EvalSet,
    *,
    count: int,
    max_new_tokens: int,
    synced: bool,
    device: torch.device,
) -> list[dict[str, str]]:
    """Collective when `synced` (ZeRO-3). The first `count` eval examples: their prompt up
    to the last reply, the reference reply and the model's greedy reply."""
    samples = []
    for index in range(min(count, len(evalset.dataset))):
        tokens, weights = evalset.dataset.example(index)
        start, end = _last_reply(np.asarray(tokens), np.asarray(weights))
        prompt = torch.as_tensor(np.asarray(tokens[:start]), dtype=torch.long, device=device)[None]
        output = model.generate(
            input_ids=prompt,
            attention_mask=torch.ones_like(prompt),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            synced_gpus=synced,
            pad_token_id=tokenizer.pad_token_id,
        )
        samples.append(
            {
                "prompt": tokenizer.decode(prompt[0]),
                "reference": tokenizer.decode(tokens[start:end]),
                "generated": tokenizer.decode(output[0, prompt.shape[1] :]),
            }
        )
    return samples


@dataclass
class Question:
    group: str  # task family, or a user file's task label
    chat: list[Message]  # ends with the user turn to answer
    reference: str
    held_out: bool | None = None  # never trained on; None where no such split exists
    check: Checker = normalized_equal
    prediction: str | None = None  # an answer given in the user's file: scored as it is


def suite_questions(
    items: list[Item], split: tuple[Collection[str], Collection[str]] | None
) -> list[Question]:
    """The suite's items as questions checked by their family's checker. `split` is
    (trained families, held-out families): a family in neither (left out of a smaller
    training set) belongs to neither mean, so runs on different training sets are
    compared on the same held-out families. None: no such split (other training data)."""

    def held_out(family: str) -> bool | None:
        if split is None or family not in {*split[0], *split[1]}:
            return None
        return family in split[1]

    return [
        Question(
            group=item.family,
            chat=item.prompt,
            reference=item.reference,
            held_out=held_out(item.family),
            check=FAMILIES[item.family].check,
        )
        for item in items
    ]


def answer_and_score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    questions: list[Question],
    *,
    rank: int = 0,
    world: int = 1,
    max_new_tokens: int,
    batch_size: int,
    synced: bool = False,
) -> tuple[dict, list[Scored]]:
    """Collective when world > 1: rank r answers questions r, r + world, ... greedily;
    rank 0 scores every answer and returns (summary, scored answers in question order),
    the other ranks ({}, [])."""
    mine = list(range(rank, len(questions), world))
    replies = greedy_replies(
        model,
        tokenizer,
        [questions[i].chat for i in mine],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        synced=synced,
    )
    answered = list(zip(mine, replies, strict=True))
    if world > 1:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, answered)
        answered = [pair for part in gathered for pair in part]
    if rank != 0:
        return {}, []
    replies_by_index = dict(answered)
    return score_answers(questions, [replies_by_index[i] for i in range(len(questions))])


def score_answers(questions: list[Question], replies: list[str]) -> tuple[dict, list[Scored]]:
    """(summary, scored answers in question order) of `replies` to `questions`."""
    scored = [
        score(q.group, _shown(q.chat), q.reference, reply, held_out=q.held_out, check=q.check)
        for q, reply in zip(questions, replies, strict=True)
    ]
    return summarize(scored), scored


def _shown(chat: list[Message]) -> str:
    """The chat as one readable string (earlier turns give the question its context)."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in chat)
