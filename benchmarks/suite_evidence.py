"""Instruction following on the tiny random-init model, measured: the suite's test split
answered by an untrained model, by a run of `model=tiny_llama` (every family but the
held-out ones), and by the same run trained on fewer families, side by side. The real
model's evidence is benchmarks/real_model_evidence.py.

    python benchmarks/suite_evidence.py                  # 150 steps, tiny_llama's default
    python benchmarks/suite_evidence.py --steps 600 --per-family 50

Every run trains through launch/train.py (Ray Train, DeepSpeed ZeRO-2, 2 CPU workers) on
the same number of chats and steps, and is scored by launch/eval.py's code path on the
same test items; held-out families are never trained on by any run.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from common import arg_parser, table_header, write_results_page
from transformers import AutoTokenizer

from framework.config.commands import EvalConfig
from framework.config.schema import DEFAULT_HELD_OUT, LoggerConfig, ModelConfig
from framework.eval.job import run_eval
from framework.eval.questions import score_answers, suite_questions
from framework.model.build import build_model
from framework.run.files import HF_DIR, METRICS_FILE, TOKENIZER_DIR
from framework.suite.build import eval_items
from framework.suite.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
# The held-out families' nearest trained relatives (uppercase for lowercase, add for
# subtract, ...) and two more: the "fewer families" run keeps every relative, so that
# it differs from the default in diversity alone.
FEWER = ["reverse_word", "uppercase", "add", "sort_ascending", "first_letters", "count_letter"]
FEWER += ["json_field", "recall"]


def train(out: Path, model: str, families: list[str] | None, more: list[str]) -> None:
    """launch/train.py on `model` (a preset) and `families` (None: every family not held
    out), with the `more` overrides."""
    overrides = [f"model={model}", f"run.output_dir={out}", "logger=none", *more]
    if families:
        overrides.append(f"data.suite.train_families=[{','.join(families)}]")
    print(f"training {out.name}: {' '.join(overrides)}", flush=True)
    subprocess.run([sys.executable, "launch/train.py", *overrides], cwd=ROOT, check=True)


def untrained(out: Path, tokenizer_dir: Path) -> Path:
    """The default run's architecture and tokenizer with its initial random weights."""
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(1234)  # trainer.seed: the weights the default run starts from
    model = build_model(ModelConfig(), tokenizer, torch.float32, attention="sdpa")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def last_eval_losses(run: Path) -> dict[str, float]:
    lines = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    evaluations = [m for m in lines if "eval_loss" in m]
    return evaluations[-1] if evaluations else {}


def majority_answers(per_family: int) -> dict:
    """A baseline without a model: every item answered with its family's most common
    test reference (e.g. "1" for count_letter, where most letters occur once)."""
    questions = suite_questions(
        eval_items(list(FAMILIES), "test", per_family, seed=0),
        ([f for f in FAMILIES if f not in DEFAULT_HELD_OUT], DEFAULT_HELD_OUT),
    )
    common = {}
    for question in questions:
        counts = common.setdefault(question.group, Counter())
        counts[question.reference] += 1
    replies = [common[q.group].most_common(1)[0][0] for q in questions]
    return score_answers(questions, replies)[0]


def scores(model: Path, per_family: int) -> dict:
    cfg = EvalConfig(
        model=str(model),
        per_family=per_family,
        held_out=list(DEFAULT_HELD_OUT),
        out=str(model.parent / f"{model.name}-eval"),
        logger=LoggerConfig(backend="none"),
    )
    return run_eval(cfg)["summary"]


def main() -> None:
    parser = arg_parser(__doc__, "suite_evidence")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--per-family", type=int, default=50)
    parser.add_argument("--work", default=None, help="directory for the runs (default: temp)")
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="suite-evidence-"))
    runs = {"more": None, "fewer": FEWER}
    for name, families in runs.items():
        if not (work / name / HF_DIR).is_dir():  # a finished run in --work is reused
            steps = [f"trainer.max_steps={args.steps}"]
            steps.append(f"eval.every={max(args.steps // 3, 1)}")
            train(work / name, "tiny_llama", families, steps)
    models = {
        "untrained": untrained(work / "untrained", work / "more" / TOKENIZER_DIR),
        "more": work / "more" / HF_DIR,
        "fewer": work / "fewer" / HF_DIR,
    }
    rows = [("majority", majority_answers(args.per_family), {})]
    for name, model in models.items():
        summary = scores(model, args.per_family)
        losses = last_eval_losses(work / name) if name in runs else {}
        rows.append((name, summary, losses))
    write_results_page(args.out, "Instruction following on the tiny model", results(rows, args))


def _mean(summary: dict, families: list[str], metric: str) -> float:
    return sum(summary["groups"][f][metric] for f in families) / len(families)


def results(rows, args) -> list[str]:
    """The scores table, the families above the majority answer, the held-out families."""
    default_families = [f for f in FAMILIES if f not in DEFAULT_HELD_OUT]
    # "seen": the families the run trained on (the default run's for the untrained model).
    seen = {
        "majority": default_families,
        "untrained": default_families,
        "more": default_families,
        "fewer": FEWER,
    }
    held = list(DEFAULT_HELD_OUT)
    lines = [
        f"The suite's test split, {args.per_family} items per family, {args.steps} training "
        f"steps; held out: {', '.join(held)}.",
        "",
        *table_header(
            "model", "families", "seen norm", "seen R-L", "held-out norm", "held-out R-L",
            "loss seen", "loss held-out",
        ),
    ]  # fmt: skip
    for name, summary, losses in rows:
        lines.append(
            f"| {name} | {len(seen[name]) if name in ('more', 'fewer') else 0} "
            f"| {_mean(summary, seen[name], 'normalized'):.1%} "
            f"| {_mean(summary, seen[name], 'rouge_l'):.3f} "
            f"| {_mean(summary, held, 'normalized'):.1%} | {_mean(summary, held, 'rouge_l'):.3f} "
            f"| {losses.get('eval_loss/suite-trained', float('nan')):.3f} "
            f"| {losses.get('eval_loss/suite-held-out', float('nan')):.3f} |"
        )
    lines += ["", "Families above the majority answer (normalized match, model vs majority):", ""]
    baseline = rows[0][1]["groups"]
    for name, summary, _ in rows[1:]:
        better = [
            f"{f} {g['normalized']:.0%} vs {baseline[f]['normalized']:.0%}"
            for f, g in summary["groups"].items()
            if g["normalized"] > baseline[f]["normalized"]
        ]
        lines.append(f"- {name}: " + (", ".join(better) or "none"))
    lines += ["", "Held-out families, normalized match / ROUGE-L:", ""]
    lines += table_header("held-out family", *(name for name, _, _ in rows))
    for family in held:
        cells = [
            f"{s['groups'][family]['normalized']:.0%} / {s['groups'][family]['rouge_l']:.3f}"
            for _, s, _ in rows
        ]
        lines.append(f"| {family} | {' | '.join(cells)} |")
    return lines


if __name__ == "__main__":
    main()
