"""Questions answered greedily and scored: one rank or two give the same answers, and
each family counts as trained, held out or neither."""

import torch

from framework.eval.questions import answer_and_score, suite_questions
from framework.model.build import build_model
from framework.suite.build import eval_items
from tests.helpers import TINY, join_group, leave_group, spawn


def _answer_on_ranks(rank, world, port, tokenizer, questions, results):
    join_group(rank, world, port)
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, torch.float32).eval()
    summary, scored = answer_and_score(
        model, tokenizer, questions, rank=rank, world=world, max_new_tokens=5, batch_size=4
    )
    if rank == 0:
        results.put((summary, [s.prediction for s in scored]))
    leave_group()


def test_answers_shared_over_two_ranks_equal_one_rank(tokenizer):
    questions = suite_questions(
        eval_items(["add", "recall", "subtract"], "test", 3, 0), (["add", "recall"], ["subtract"])
    )
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, torch.float32).eval()
    summary, scored = answer_and_score(model, tokenizer, questions, max_new_tokens=5, batch_size=4)
    assert [s.group for s in scored] == ["add"] * 3 + ["recall"] * 3 + ["subtract"] * 3
    assert [s.held_out for s in scored] == [False] * 6 + [True] * 3
    results = torch.multiprocessing.get_context("spawn").SimpleQueue()
    spawn(_answer_on_ranks, 2, tokenizer, questions, results)
    two_ranks, predictions = results.get()
    assert predictions == [s.prediction for s in scored]
    assert two_ranks == summary


def test_families_are_trained_held_out_or_neither():
    items = eval_items(["add", "recall", "subtract"], "test", 1, 0)
    labels = [q.held_out for q in suite_questions(items, (["add"], ["subtract"]))]
    assert labels == [False, None, True]  # recall: left out of training, not held out
    assert [q.held_out for q in suite_questions(items, None)] == [None, None, None]
