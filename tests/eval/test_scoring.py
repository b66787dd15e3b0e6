"""Scores and their means, against values worked out by hand."""

from __future__ import annotations

import pytest

from framework.eval.scoring import (
    examples_worst_first,
    flat_metrics,
    format_table,
    score,
    summarize,
)
from framework.suite.families import FAMILIES


def test_one_answer_scores_as_worked_out_by_hand():
    same = score("g", "q", "the cat sat", "the cat sat")
    assert (same.exact, same.normalized, same.rouge_l) == (1.0, 1.0, 1.0)
    cased = score("g", "q", "the cat sat", "The cat sat.")
    assert (cased.exact, cased.normalized, cased.rouge_l) == (0.0, 1.0, 1.0)
    # LCS 2 of 2 predicted and 3 reference tokens: P = 1, R = 2/3, F1 = 0.8.
    short = score("g", "q", "the cat sat", "the cat")
    assert (short.exact, short.normalized) == (0.0, 0.0)
    assert short.rouge_l == pytest.approx(0.8)
    assert score("g", "q", "a b c d", "x y").rouge_l == 0.0


def test_a_family_checker_decides_the_normalized_match():
    check = FAMILIES["uppercase"].check
    assert score("uppercase", "q", "APPLE", "apple", check=check).normalized == 0.0
    assert score("uppercase", "q", "APPLE", " APPLE", check=check).normalized == 1.0


def test_means_per_group_and_over_trained_and_held_out_groups():
    scored = [
        score("a", "q1", "the cat sat", "the cat sat", held_out=False),
        score("a", "q2", "the cat sat", "The cat sat.", held_out=False),
        score("b", "q3", "the cat sat", "the cat", held_out=True),
        score("b", "q4", "a b c d", "x y", held_out=True),
        score("c", "q5", "7", "7", held_out=False),
    ]
    summary = summarize(scored)
    assert list(summary["groups"]) == ["b", "a", "c"]  # worst first
    assert summary["groups"]["a"] == {
        "n": 2,
        "held_out": False,
        "exact": 0.5,
        "normalized": 1.0,
        "rouge_l": 1.0,
    }
    assert summary["groups"]["b"]["rouge_l"] == pytest.approx(0.4)
    # Each group weighs the same: trained = mean of a and c; all = mean of a, b and c.
    assert summary["trained"] == {"groups": 2, "exact": 0.75, "normalized": 1.0, "rouge_l": 1.0}
    assert summary["held_out"] == pytest.approx(
        {"groups": 1, "exact": 0.0, "normalized": 0.0, "rouge_l": 0.4}
    )
    assert summary["all"] == pytest.approx(
        {"groups": 3, "exact": 0.5, "normalized": 2 / 3, "rouge_l": 2.4 / 3}
    )
    metrics = flat_metrics(summary, "suite")
    assert metrics["suite/held_out/rouge_l"] == pytest.approx(0.4)
    assert metrics["suite/family/a"] == 1.0
    rows = examples_worst_first(scored, summary)
    assert [r["prompt"] for r in rows] == ["q4", "q3", "q2", "q1", "q5"]
    table = format_table(summary).splitlines()
    assert table[2].startswith("b ") and "held-out" in table[2]
    assert table[-1].startswith("mean: all") and "66.7%" in table[-1]
