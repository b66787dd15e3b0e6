"""Questions with checkable references, answered greedily and scored: the suite's task
families (trained, held out, or neither) or a user's JSONL file, shared out over any
number of ranks."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.data.formats import DataError
from framework.eval.generate import Message, shared_greedy_replies
from framework.eval.scoring import Checker, Scored, score, summarize
from framework.suite.build import Item
from framework.suite.checkers import normalized_equal
from framework.suite.families import FAMILIES


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
    progress: bool = False,
) -> tuple[dict, list[Scored]]:
    """Collective when world > 1: rank r answers questions r, r + world, ... greedily;
    rank 0 scores every answer and returns (summary, scored answers in question order),
    the other ranks ({}, [])."""
    replies = shared_greedy_replies(
        model,
        tokenizer,
        [q.chat for q in questions],
        rank=rank,
        world=world,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        synced=synced,
        progress=progress,
    )
    if replies is None:
        return {}, []
    return score_answers(questions, replies)


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
