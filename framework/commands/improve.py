"""Rounds of improvement from the model's own checked answers (launch/improve.py).

Each round: new prompts of the suite's trained families (train split) are answered
`samples` times each by the current model, sampled on Ray workers; the family's checker
marks every answer right or wrong (a verifiable reward); a prompt with a right and a wrong
answer gives a pair, the right one chosen; one preference training run (launch/train.py,
objective=dpo by default) on those pairs gives the next model; the suite's validation
items, answered greedily, score it. The start model is scored the same way, so the
table's rows compare: trained families, held-out knowledge and held-out twists (never
trained on, in SFT or here) per round.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import subprocess
import sys
from collections import Counter
from pathlib import Path

from framework.config.commands import EvalConfig, ImproveConfig
from framework.config.schema import LoggerConfig, SuiteConfig
from framework.eval.job import run_eval
from framework.eval.verifiers import VERIFIERS
from framework.run.files import HF_DIR, write_json
from framework.suite.build import Item, family_items, trained_families

ROUNDS_FILE = "rounds.jsonl"
PAIRS_FILE = "pairs.jsonl"
TRAIN_SCRIPT = Path(__file__).resolve().parents[2] / "launch" / "train.py"
# What each round's table row shows: normalised exact match per group of families.
GROUPS = ("trained", "held_out_knowledge", "held_out_twists")


def round_prompts(cfg: ImproveConfig, round_index: int) -> list[Item]:
    """`prompts_per_family` train-split items of every trained family, new each round (the
    first items of round r + 1 follow round r's in the same draw)."""
    suite = SuiteConfig(held_out=list(cfg.held_out))
    count = cfg.prompts_per_family
    return [
        item
        for family in trained_families(suite)
        for item in family_items(family, "train", count * round_index, cfg.seed)[-count:]
    ]


def build_pairs(items: list[Item], answers: list[list[str]]) -> tuple[list[dict], Counter]:
    """A pair (TRL's prompt / chosen / rejected) for each prompt with a right and a wrong
    answer, by the suite verifier (its family's checker; online RL's rewards use the same
    registry): the first right one over the first wrong one. Counts the prompts whose
    answers were all right, all wrong, or mixed (a pair)."""
    pairs, counts = [], Counter()
    for item, replies in zip(items, answers, strict=True):
        spec = {"family": item.family, "reference": item.reference}
        right = [r for r in replies if VERIFIERS["suite"](r, spec) == 1.0]
        wrong = [r for r in replies if VERIFIERS["suite"](r, spec) != 1.0]
        if right and wrong:
            pairs.append(
                {"prompt": item.prompt, "chosen": right[0], "rejected": wrong[0],
                 "family": item.family}
            )  # fmt: skip
        counts["mixed" if right and wrong else "all_right" if right else "all_wrong"] += 1
    return pairs, counts


def score(cfg: ImproveConfig, model: str, out: Path) -> dict:
    """The suite's validation items answered greedily by `model`: eval.json's summary."""
    evaluation = EvalConfig(
        model=model,
        split="validation",
        per_family=cfg.eval_per_family,
        held_out=list(cfg.held_out),
        seed=cfg.seed,
        out=str(out),
        cache_dir=cfg.cache_dir,
        logger=LoggerConfig(backend="none"),
    )
    return run_eval(evaluation)["summary"]


def train_round(cfg: ImproveConfig, model: str, pairs: Path, out: Path) -> str:
    """One preference training run on `pairs` (and the feedback log's, cfg.feedback) from
    `model`, as launch/train.py runs it; returns the trained model's directory."""
    data = f"{{path: '{pairs}'}}"
    if cfg.feedback is not None:
        data += f", {{path: '{cfg.feedback}', format: feedback}}"
    overrides = [
        f"model.name_or_path={model}",
        f"data.sources=[{data}]",
        f"run.output_dir={out}",
        f"run.cache_dir={cfg.cache_dir}",
        *cfg.train,
    ]
    done = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *overrides], check=False)
    if done.returncode != 0:
        raise RuntimeError(
            f"the round's training run failed (exit {done.returncode}); its output is above "
            f"and in {out}; rerun it with: python {TRAIN_SCRIPT} {shlex.join(overrides)}"
        )
    return str(out / HF_DIR)


def accuracies(summary: dict) -> dict[str, float]:
    return {group: summary[group]["normalized"] for group in GROUPS if group in summary}


def format_rounds(rows: list[dict]) -> str:
    """The rounds as a table: pairs built and accuracy per group of families."""
    header = f"{'round':>5} {'prompts':>8} {'mixed':>6} {'pairs':>6} " + " ".join(
        f"{g:>18}" for g in GROUPS
    )
    lines = [header]
    for row in rows:
        counts = row.get("prompts", {})
        lines.append(
            f"{row['round']:>5} {sum(counts.values()):>8} {counts.get('mixed', 0):>6} "
            f"{row.get('pairs', 0):>6} "
            + " ".join(f"{row['accuracy'].get(g, float('nan')):>18.1%}" for g in GROUPS)
        )
    return "\n".join(lines)


def run_rounds(cfg: ImproveConfig, sample) -> list[dict]:
    """Score the start model, then cfg.rounds rounds; `sample(model, chats)` gives each
    chat's sampled answers (framework/cluster/ray_sampling.py on Ray workers). Writes each
    round's pairs, run and eval under cfg.out and one line per round to rounds.jsonl."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    model = cfg.model
    rows = [
        {"round": 0, "model": model, "accuracy": accuracies(score(cfg, model, out / "round_0"))}
    ]
    for index in range(1, cfg.rounds + 1):
        where = out / f"round_{index}"
        where.mkdir(exist_ok=True)
        items = round_prompts(cfg, index)
        pairs, counts = build_pairs(items, sample(model, [item.prompt for item in items]))
        if not pairs:
            print(f"round {index}: no prompt had both a right and a wrong answer; stopping")
            break
        path = where / PAIRS_FILE
        path.write_text("".join(json.dumps(pair) + "\n" for pair in pairs))
        model = train_round(cfg, model, path, where / "run")
        summary = score(cfg, model, where / "eval")
        rows.append({"round": index, "model": model, "prompts": dict(counts),
                     "pairs": len(pairs), "accuracy": accuracies(summary)})  # fmt: skip
        print(format_rounds(rows), flush=True)
    (out / ROUNDS_FILE).write_text("".join(json.dumps(row) + "\n" for row in rows))
    write_json(out / "improve_config.json", dataclasses.asdict(cfg))
    return rows
