"""Scores of generated answers against references: exact match, normalized match (a task
family's own checker, or the generic normalization) and ROUGE-L F1 (rouge-score), then
means per group (task family, or the `task` of a user's file) and over trained and
held-out families, worst groups first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache

from rouge_score import rouge_scorer, tokenizers

from framework.config.schema import KNOWLEDGE_FAMILIES
from framework.suite.checkers import normalized_equal

METRICS = ("exact", "normalized", "rouge_l")
# Means reported: trained families; held-out ones, then apart: knowledge (facts from
# pretraining asked tersely, suite/knowledge.py) and twists (every other held-out family:
# variants of trained skills); all.
AGGREGATES = ("trained", "held_out", "held_out_knowledge", "held_out_twists", "all")
Checker = Callable[[str, str], bool]


@dataclass
class Scored:
    group: str  # the task family, or a user file's task label
    held_out: bool | None  # never trained on; None where no such split exists
    prompt: str  # the last user turn, for reading errors
    reference: str
    prediction: str
    exact: float
    normalized: float
    rouge_l: float


@cache
def _rouge() -> rouge_scorer.RougeScorer:
    # The tokenizer given, as RougeScorer's default: without one it logs "Using default
    # tokenizer." on the console, with no context.
    return rouge_scorer.RougeScorer(["rougeL"], tokenizer=tokenizers.DefaultTokenizer())


def score(
    group: str,
    prompt: str,
    reference: str,
    prediction: str,
    *,
    held_out: bool | None = None,
    check: Checker = normalized_equal,
) -> Scored:
    """One answer's scores; `check` decides the normalized match (a family's checker)."""
    return Scored(
        group=group,
        held_out=held_out,
        prompt=prompt,
        reference=reference,
        prediction=prediction,
        exact=float(prediction.strip() == reference.strip()),
        normalized=float(check(prediction, reference)),
        rouge_l=_rouge().score(reference, prediction)["rougeL"].fmeasure,
    )


def _means(rows: list[Scored]) -> dict[str, float]:
    return {m: sum(getattr(r, m) for r in rows) / len(rows) for m in METRICS}


def summarize(scored: list[Scored]) -> dict:
    """{"groups": {name: {n, held_out, exact, normalized, rouge_l}} worst first (by
    normalized match, then ROUGE-L), and for each of AGGREGATES that has groups: the mean
    over groups (each group weighs the same, whatever its size) and the group count."""
    names = list(dict.fromkeys(r.group for r in scored))
    groups = {}
    for name in names:
        rows = [r for r in scored if r.group == name]
        groups[name] = {"n": len(rows), "held_out": rows[0].held_out, **_means(rows)}
    ordered = sorted(names, key=lambda n: (groups[n]["normalized"], groups[n]["rouge_l"]))
    summary: dict = {"groups": {name: groups[name] for name in ordered}}
    held_out = {n: g for n, g in groups.items() if g["held_out"] is True}
    selections = {
        "trained": [g for g in groups.values() if g["held_out"] is False],
        "held_out": list(held_out.values()),
        "held_out_knowledge": [g for n, g in held_out.items() if n in KNOWLEDGE_FAMILIES],
        "held_out_twists": [g for n, g in held_out.items() if n not in KNOWLEDGE_FAMILIES],
        "all": list(groups.values()),
    }
    for label, chosen in selections.items():
        if chosen:
            summary[label] = {
                "groups": len(chosen),
                **{m: sum(g[m] for g in chosen) / len(chosen) for m in METRICS},
            }
    return summary


def flat_metrics(summary: dict, prefix: str) -> dict[str, float]:
    """Curves for a tracker: `<prefix>/<aggregate>/<metric>` and the normalized match of
    every group as `<prefix>/family/<group>`."""
    metrics = {
        f"{prefix}/{label}/{m}": summary[label][m]
        for label in AGGREGATES
        if label in summary
        for m in METRICS
    }
    for name, group in summary["groups"].items():
        metrics[f"{prefix}/family/{name}"] = group["normalized"]
    return metrics


def format_table(summary: dict) -> str:
    """Per-group rows, worst first, then the aggregates."""
    header = f"{'group':<28}{'split':<10}{'n':>5}{'exact':>9}{'normalized':>12}{'rouge_l':>9}"
    lines = [header, "-" * len(header)]

    def row(name: str, split: str, n: int, values: dict) -> str:
        return (
            f"{name[:27]:<28}{split:<10}{n:>5}{values['exact']:>9.1%}"
            f"{values['normalized']:>12.1%}{values['rouge_l']:>9.3f}"
        )

    for name, group in summary["groups"].items():
        split = {True: "held-out", False: "trained", None: "-"}[group["held_out"]]
        lines.append(row(name, split, group["n"], group))
    lines.append("-" * len(header))
    for label in AGGREGATES:
        if label in summary:
            lines.append(row(f"mean: {label}", "", summary[label]["groups"], summary[label]))
    return "\n".join(lines)


def examples_worst_first(scored: list[Scored], summary: dict) -> list[dict]:
    """Every answer as a dict, grouped in the summary's order (worst group first) and,
    within a group, wrong answers before right ones."""
    rank = {name: i for i, name in enumerate(summary["groups"])}
    ordered = sorted(scored, key=lambda r: (rank[r.group], r.normalized, r.exact, r.rouge_l))
    return [asdict(r) for r in ordered]
