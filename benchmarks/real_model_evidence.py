"""Zero-shot gains of a real model: SmolLM2-135M-Instruct before instruction tuning, after
the embedded default run, and after longer runs on more vs fewer training families, on the
suite's test split: trained families, held-out knowledge (facts from pretraining asked
tersely) and held-out twists (variants of trained skills), beside the majority-answer
baseline; then a few answers before and after, and the runs' throughput and memory.

    python benchmarks/real_model_evidence.py --work /tmp/evidence       # about an hour
    python benchmarks/real_model_evidence.py --work /tmp/evidence --steps 40 --per-family 20

Every run is launch/train.py (Ray Train, 2 CPU workers, DeepSpeed ZeRO-2, full fine-tune):
"default" exactly as `python launch/train.py` (the smollm2_135m preset's steps), "more" and
"fewer" with --steps. Every model answers the same test items through launch/eval.py's
code path. A finished run or evaluation in --work is reused.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from common import arg_parser, table_header, write_results_page
from suite_evidence import FEWER, majority_answers, train

from framework.config.commands import EvalConfig
from framework.config.schema import DEFAULT_HELD_OUT, KNOWLEDGE_FAMILIES, LoggerConfig
from framework.eval.job import run_eval
from framework.run.files import EVAL_FILE, HF_DIR, METRICS_FILE, SUMMARY_FILE
from framework.suite.families import FAMILIES

MODEL = "smollm2_135m"
CACHE = os.path.join(os.environ.get("HOME", "/tmp"), ".cache", "instruct-sft")
COLUMNS = ("trained", "held_out_knowledge", "held_out_twists")


def run(work: Path, name: str, steps: int | None, families: list[str] | None) -> Path:
    """The run's directory, trained unless --work holds it finished; the launch time is
    kept for the time to the first step."""
    out = work / name
    if not (out / HF_DIR).is_dir():
        started = time.time()
        train(out, MODEL, families, [] if steps is None else [f"trainer.max_steps={steps}"])
        (out / "launched_at").write_text(str(started))
    return out


def evaluate(model: str, out: Path, per_family: int) -> dict:
    if not (out / EVAL_FILE).is_file():
        cfg = EvalConfig(
            model=model,
            per_family=per_family,
            held_out=list(DEFAULT_HELD_OUT),
            out=str(out),
            cache_dir=CACHE,
            logger=LoggerConfig(backend="none"),
        )
        run_eval(cfg)
    return json.loads((out / EVAL_FILE).read_text())


def _means(summary: dict, families: list[str], metric: str) -> float:
    return sum(summary["groups"][f][metric] for f in families) / len(families)


def zero_shot_table(results: dict[str, dict], seen: dict[str, list[str]]) -> list[str]:
    """Normalized match (exact match in brackets), means over families; then per held-out
    family."""
    held = {
        "held_out_knowledge": list(KNOWLEDGE_FAMILIES),
        "held_out_twists": [f for f in DEFAULT_HELD_OUT if f not in KNOWLEDGE_FAMILIES],
    }
    lines = table_header("model", "families trained", *COLUMNS)
    for name, summary in results.items():
        cells = []
        for column in COLUMNS:
            families = seen[name] if column == "trained" else held[column]
            normalized, exact = (_means(summary, families, m) for m in ("normalized", "exact"))
            cells.append(f"{normalized:.1%} ({exact:.1%})")
        count = len(seen[name]) if name not in ("base", "majority") else 0
        lines.append(f"| {name} | {count} | {' | '.join(cells)} |")
    lines += ["", "Per held-out family, normalized match:", ""]
    lines += table_header("held-out family", *results)
    for family in DEFAULT_HELD_OUT:
        cells = [f"{s['groups'][family]['normalized']:.0%}" for s in results.values()]
        lines.append(f"| {family} | {' | '.join(cells)} |")
    return lines


def side_by_side(before: dict, after: dict) -> list[str]:
    """Per knowledge family, the first test item the default run gets right that the base
    model got wrong, and the first it gets wrong."""
    lines = ["Answers before (base) and after (default run), held-out knowledge:", ""]
    base = {a["prompt"]: a for a in before["answers"]}
    for family in KNOWLEDGE_FAMILIES:
        answers = [a for a in after["answers"] if a["group"] == family]
        right = [a for a in answers if a["normalized"] and not base[a["prompt"]]["normalized"]]
        wrong = [a for a in answers if not a["normalized"]]
        for label, chosen in (("right", right[:1]), ("wrong", wrong[:1])):
            for answer in chosen:
                before_text = " ".join(base[answer["prompt"]]["prediction"].split())[:100]
                lines += [
                    f"- [{family}, {label}] {answer['prompt']}  -> {answer['reference']}",
                    f"  - base: {before_text}",
                    f"  - default: {' '.join(answer['prediction'].split())[:100]}",
                ]
    return lines


def throughput_table(runs: dict[str, Path]) -> list[str]:
    """From each run's summary.json and metrics.jsonl. Start-up: launch to the end of the
    baseline evaluation, the start of the first step (model conversion when not cached,
    data, Ray, model and engine build, the evaluation)."""
    columns = ("steps", "tokens/s", "trained tokens/s", "peak RSS/worker (GB)")
    columns += ("start-up (s)", "s/step", "training (s)")
    lines = table_header("run", *columns)
    for name, out in runs.items():
        summary = json.loads((out / SUMMARY_FILE).read_text())
        metrics = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
        baseline = next(m for m in metrics if m["step"] == 0)
        launched = out / "launched_at"
        startup = (
            f"{baseline['time'] - float(launched.read_text()):.0f}" if launched.is_file() else "-"
        )
        seconds = summary["training_time_s"]
        lines.append(
            f"| {name} | {summary['steps']} | {summary['tokens_per_s']:.0f} | "
            f"{summary['trained_tokens'] / seconds:.1f} | {summary['peak_memory_gb']:.2f} | "
            f"{startup} | {seconds / summary['steps']:.1f} | {seconds:.0f} |"
        )
    return lines


def main() -> None:
    parser = arg_parser(__doc__, "real_model_evidence")
    parser.add_argument("--work", required=True, help="directory for runs and evaluations")
    parser.add_argument("--steps", type=int, default=40, help="steps of the longer runs")
    parser.add_argument("--per-family", type=int, default=20)
    args = parser.parse_args()
    work = Path(args.work)
    trained_default = [f for f in FAMILIES if f not in DEFAULT_HELD_OUT]
    runs = {
        "default": run(work, "default", None, None),
        "more": run(work, "more", args.steps, None),
        "fewer": run(work, "fewer", args.steps, FEWER),
    }
    results = {"majority": majority_answers(args.per_family)}
    evaluations = {"base": evaluate(MODEL, work / "base-eval", args.per_family)}
    for name, out in runs.items():
        evaluations[name] = evaluate(str(out / HF_DIR), work / f"{name}-eval", args.per_family)
    results |= {name: e["summary"] for name, e in evaluations.items()}
    seen = {name: trained_default for name in results} | {"fewer": FEWER}
    body = [
        "## Zero-shot scores",
        "",
        f"The suite's test split, {args.per_family} items per family; normalized match "
        f"(exact); default = the preset's steps, more/fewer = {args.steps} steps.",
        "",
        *zero_shot_table(results, seen),
        "",
        *side_by_side(evaluations["base"], evaluations["default"]),
        "",
        "## Throughput and memory of the runs (wall times)",
        "",
        *throughput_table(runs),
    ]
    write_results_page(args.out, "Zero-shot gains of SmolLM2-135M-Instruct", body)


if __name__ == "__main__":
    sys.exit(main())
