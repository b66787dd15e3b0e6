"""IFEval and the suite before and after online RL (objective=grpo) on constraint prompts
(data=rl_demo: alpaca instructions with IFEval-style constraints, decontaminated against
IFEval), from the base SmolLM2-135M-Instruct and from the default SFT run's export. It
shows whether rewards from IFEval's checkers on our own prompts raise IFEval, and what RL
costs on the suite's trained and held-out families.

    python benchmarks/grpo_evidence.py --work /tmp/grpo-evidence                # both starts
    python benchmarks/grpo_evidence.py --work /tmp/grpo-evidence --starts base  # ~75 min

Every model answers all 541 IFEval prompts (--limit for fewer) as in
benchmarks/ifeval_evidence.py (lm-eval's protocol: greedy, up to 1280 new tokens). Finished
runs and evaluations in --work are reused.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from common import arg_parser, table_header, write_results_page
from ifeval_evidence import ifeval, kind_table, score_table, suite_means, trained_run
from real_model_evidence import MODEL, evaluate
from suite_evidence import train

from framework.run.files import HF_DIR, METRICS_FILE

# The RL run: 30 steps of 4 prompts x 8 completions (960 completions), DAPO's clip-higher,
# the token-mean loss, at a rate that moves a 135M model in that many steps.
GRPO = [
    "objective=grpo",
    "data=rl_demo",
    "trainer.max_steps=30",
    "trainer.lr=2e-5",
    "trainer.warmup_steps=2",
    "trainer.lr_schedule=constant",
    "trainer.log_every=1",
    "rollout.group_size=8",
    "rollout.batch_completions=32",
    "rollout.max_new_tokens=192",
    "objective.clip_high=0.28",
    "eval.suite_per_family=0",
    "eval.samples=0",
    "checkpoint.every=10",
]
STARTS = ("base", "sft")


def grpo_run(work: Path, name: str, start: str | None) -> Path:
    """The GRPO run's directory, trained unless --work holds it finished; `start` is a
    model directory (None: the preset's base model)."""
    out = work / name
    if not (out / HF_DIR).is_dir():
        more = [*GRPO] + ([f"model.name_or_path={start}"] if start else [])
        train(out, MODEL, None, more)
    return out


def reward_curve(run: Path) -> dict[str, float]:
    """Mean reward of the first and last five steps, and the run's wall time."""
    lines = [json.loads(line) for line in (run / METRICS_FILE).read_text().splitlines()]
    steps = [m for m in lines if "reward" in m]
    first, last = steps[:5], steps[-5:]
    return {
        "first": sum(m["reward"] for m in first) / len(first),
        "last": sum(m["reward"] for m in last) / len(last),
        "step_s": sum(m["step_time_s"] for m in steps) / len(steps),
        "logp_gap": max(m.get("logp_gap", 0.0) for m in steps),
    }


def main() -> None:
    parser = arg_parser(__doc__, "grpo_evidence")
    parser.add_argument("--work", required=True, help="directory for runs and evaluations")
    parser.add_argument("--starts", default=",".join(STARTS), help="base, sft or both")
    parser.add_argument("--limit", type=int, default=None, help="IFEval prompts (all: 541)")
    parser.add_argument("--per-family", type=int, default=20, help="suite test items")
    args = parser.parse_args()
    work = Path(args.work)
    starts = args.starts.split(",")
    models, runs = {"base": MODEL}, {}
    if "base" in starts:
        runs["GRPO from base"] = grpo_run(work, "grpo-base", None)
    if "sft" in starts:
        models["default run (suite)"] = sft = trained_run(work, "default", [])
        runs["GRPO from the default run"] = grpo_run(work, "grpo-sft", sft)
    models |= {name: str(run / HF_DIR) for name, run in runs.items()}
    rows = {}
    for name, model in models.items():
        slug = name.replace(" ", "-").replace("(", "").replace(")", "")
        rows[name] = (
            ifeval(model, work / f"ifeval-{slug}", args.limit),
            suite_means(evaluate(model, work / f"suite-{slug}", args.per_family)["summary"]),
        )
    body = [
        f"IFEval ({args.limit or 541} prompts) and the suite's test split "
        f"({args.per_family} items per family); IFEval time is a wall time. The GRPO runs: "
        f"`python launch/train.py model={MODEL} {' '.join(GRPO)}` (from the default run: "
        "plus `model.name_or_path=<its hf/>`).",
        "",
        *score_table(rows),
        "",
        "## The RL runs: reward on their own prompts",
        "",
        *table_header(
            "run", "reward, first 5 steps", "reward, last 5 steps", "s/step", "largest logp_gap"
        ),
        *(
            f"| {name} | {c['first']:.3f} | {c['last']:.3f} | {c['step_s']:.0f} | "
            f"{c['logp_gap']:.3f} |"
            for name, c in ((n, reward_curve(r)) for n, r in runs.items())
        ),
        "",
        "## Strict accuracy per instruction kind, the kinds that moved most first",
        "",
        *kind_table({name: ife for name, (ife, _) in rows.items()}),
    ]
    write_results_page(args.out, "IFEval before and after online RL (GRPO)", body)


if __name__ == "__main__":
    sys.exit(main())
