"""IFEval before and after fine-tuning, beside the suite's scores, in one table: the base
SmolLM2-135M-Instruct (ours: dequantized from the packaged Q4_1 GGUF), the default run
(the suite alone) and the same run on the suite mixed with the alpaca demo
(data=suite_alpaca_mix). It shows what narrow data does to general instruction following,
and whether general data in the mix keeps it.

    python benchmarks/ifeval_evidence.py --work /tmp/ifeval      # about 90 minutes on 2 cores

Every model answers all 541 prompts (--limit for fewer) with lm-eval's protocol (greedy,
up to 1280 new tokens, the chat template), in the dtype eval picks (bf16 where fast).
Finished runs and evaluations in --work are reused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import arg_parser, table_header, write_results_page
from real_model_evidence import CACHE, MODEL, evaluate
from suite_evidence import train

from framework.config.commands import EvalConfig
from framework.config.schema import DEFAULT_HELD_OUT, KNOWLEDGE_FAMILIES, LoggerConfig
from framework.eval.job import run_eval
from framework.run.files import EVAL_FILE, HF_DIR
from framework.suite.families import FAMILIES

ROOT = Path(__file__).resolve().parents[1]
IFEVAL_FILE = ROOT.parent / "shared" / "data" / "ifeval" / "input_data.jsonl"
# SmolLM2-135M-Instruct's model card ("Instruction model" table): IFEval (Average
# prompt/inst) 29.9, lighteval, zero-shot, the bf16 model.
PUBLISHED = 29.9


def ifeval(model: str, out: Path, limit: int | None) -> dict:
    if not (out / EVAL_FILE).is_file():
        cfg = EvalConfig(
            model=model,
            eval="ifeval",
            path=str(IFEVAL_FILE),
            limit=limit,
            out=str(out),
            cache_dir=CACHE,
            logger=LoggerConfig(backend="none"),
        )
        run_eval(cfg)
    return json.loads((out / EVAL_FILE).read_text())["summary"]


def trained_run(work: Path, name: str, more: list[str]) -> str:
    out = work / name
    if not (out / HF_DIR).is_dir():
        train(out, MODEL, None, more)
    return str(out / HF_DIR)


def suite_means(summary: dict) -> dict[str, float]:
    trained = [f for f in FAMILIES if f not in DEFAULT_HELD_OUT]
    twists = [f for f in DEFAULT_HELD_OUT if f not in KNOWLEDGE_FAMILIES]
    groups = summary["groups"]
    return {
        name: sum(groups[f]["normalized"] for f in families) / len(families)
        for name, families in (
            ("trained", trained),
            ("knowledge", list(KNOWLEDGE_FAMILIES)),
            ("twists", twists),
        )
    }


def main() -> None:
    parser = arg_parser(__doc__, "ifeval_evidence")
    parser.add_argument("--work", required=True, help="directory for runs and evaluations")
    parser.add_argument("--limit", type=int, default=None, help="IFEval prompts (all: 541)")
    parser.add_argument("--per-family", type=int, default=20, help="suite test items")
    args = parser.parse_args()
    work = Path(args.work)
    models = {
        "base": MODEL,
        "default run (suite)": trained_run(work, "default", []),
        "suite + alpaca": trained_run(work, "mixed", ["data=suite_alpaca_mix"]),
    }
    rows = {}
    for i, (name, model) in enumerate(models.items()):
        rows[name] = (
            ifeval(model, work / f"ifeval-{i}", args.limit),
            suite_means(evaluate(model, work / f"suite-{i}", args.per_family)["summary"]),
        )
    body = [
        f"IFEval ({args.limit or 541} prompts) and the suite's test split "
        f"({args.per_family} items per family); IFEval time is a wall time.",
        "",
        *score_table(rows),
        "",
        "## Strict accuracy per instruction kind, the kinds that moved most first",
        "",
        *kind_table({name: ife for name, (ife, _) in rows.items()}),
    ]
    write_results_page(args.out, "IFEval before and after fine-tuning", body)


def score_table(rows: dict[str, tuple[dict, dict]]) -> list[str]:
    columns = ["prompt strict", "inst strict", "prompt loose", "inst loose", "avg strict"]
    columns += ["suite trained", "held-out knowledge", "held-out twists", "IFEval time"]
    lines = table_header("model", *columns)
    for name, (ife, suite) in rows.items():
        average = (ife["prompt_strict"] + ife["inst_strict"]) / 2
        cells = [f"{ife[k]:.1%}" for k in ("prompt_strict", "inst_strict")]
        cells += [f"{ife[k]:.1%}" for k in ("prompt_loose", "inst_loose")]
        cells += [f"{average:.1%}", *(f"{v:.1%}" for v in suite.values())]
        lines.append(f"| {name} | {' | '.join(cells)} | {ife['seconds']:.0f} s |")
    lines.append(f"| published (model card) | | | | | {PUBLISHED}% | | | | |")
    return lines


def kind_table(results: dict[str, dict]) -> list[str]:
    """Strict accuracy per instruction kind, the kinds that moved most first."""
    names = list(results)
    kinds = results[names[0]]["kinds"]
    spread = {
        kind: max(r["kinds"][kind]["strict"] for r in results.values())
        - min(r["kinds"][kind]["strict"] for r in results.values())
        for kind in kinds
    }
    lines = table_header("instruction kind", "n", *names)
    for kind in sorted(kinds, key=lambda k: -spread[k]):
        cells = [f"{results[n]['kinds'][kind]['strict']:.0%}" for n in names]
        lines.append(f"| {kind} | {kinds[kind]['n']} | {' | '.join(cells)} |")
    return lines


if __name__ == "__main__":
    sys.exit(main())
