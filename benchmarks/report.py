"""What report.html costs: drawing time and page size as runs get longer, and what the
redraw after each checkpoint costs the training steps.

Run from the repository root:

    python benchmarks/report.py                 # 100 to 100,000 logged steps
    python benchmarks/report.py --quick         # 100 and 1,000
    python benchmarks/report.py --run outputs/sft   # lengthen this run instead

Trains a 6-step tiny run with 4 evaluations through launch/train.py (about 2 minutes), or
takes --run. Each row of the first table then copies that run directory with a
metrics.jsonl of N training lines: the run's own lines, repeated and renumbered, and an
evaluation every N / 10 steps (the run's evaluations, repeated). It times reading the
directory and drawing the page (every point of every line).

The second table (not with --run) trains the tiny run for 12 steps with a checkpoint every
3, with run.report=true and with run.report=false: the training time (summary.json's sum of
step times) and the slowest step. On 2 workers on 2 cores the drawing thread competes with
the workers for the cores; tiny steps take a fraction of a second, so this is the worst
case: a real model's steps take longer than the drawing.
"""

from __future__ import annotations

import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, arg_parser, bench_workdir, progress, table_header, write_results_page

from framework.report import page
from framework.report.runs import read_run
from framework.run.files import METRICS_FILE

TINY_RUN = [
    "model=tiny_llama", "model.num_layers=2", "data.max_seq_len=256", "trainer.max_steps=6",
    "eval.every=2", "eval.suite_per_family=2", "trainer.log_every=1",
    "data.suite.train_examples=240", "logger=none", "trainer.precision=fp32",
]  # fmt: skip
STEPS = [100, 1_000, 10_000, 100_000]


def main() -> None:
    parser = arg_parser(__doc__, "report", "100 and 1,000 logged steps only")
    parser.add_argument("--run", type=Path, help="a run directory to lengthen")
    args = parser.parse_args()
    with bench_workdir("report-bench-") as tmp:
        source = args.run or _tiny_run(tmp)
        rows = [_measure(source, tmp / f"steps-{n}", n) for n in STEPS[: 2 if args.quick else None]]
    body = [
        "## Drawing the page as runs get longer",
        "",
        f"The {'run ' + str(args.run) if args.run else 'tiny run'} lengthened to N logged "
        "training steps with an evaluation every N / 10; one read and one draw each.",
        "",
        *table_header("logged steps", "evaluations", "read s", "draw s", "page MB"),
        *rows,
    ]
    if args.run is None:
        body += ["", *_training_cost()]
    write_results_page(args.out, "What report.html costs", body)


def _training_cost() -> list[str]:
    lines = [
        "## What the redraw after each checkpoint costs the steps",
        "",
        "The tiny run for 12 steps with a checkpoint every 3, 2 workers on this machine's "
        "cores, with and without the report (wall times).",
        "",
        *table_header("run.report", "training time s", "slowest step s"),
    ]
    for report in ("true", "false"):
        with bench_workdir("report-bench-") as tmp:
            progress(f"12 steps with run.report={report}")
            out = _tiny_run(tmp, "trainer.max_steps=12", "checkpoint.every=3",
                            f"run.report={report}")  # fmt: skip
            summary = json.loads((out / "summary.json").read_text())
            steps = [m["step_time_s"] for m in _lines(out) if "loss" in m]
            lines.append(f"| {report} | {summary['training_time_s']:.2f} | {max(steps):.2f} |")
    return lines


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]


def _tiny_run(tmp: Path, *more: str) -> Path:
    progress("training the tiny run (about 2 minutes)")
    out = tmp / "run"
    command = [sys.executable, "launch/train.py", *TINY_RUN, f"run.output_dir={out}",
               f"run.cache_dir={tmp / 'cache'}", *more]  # fmt: skip
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return out


def _measure(source: Path, copy: Path, steps: int) -> str:
    progress(f"{steps:,} logged steps")
    evaluations = _lengthened(source, copy, steps)
    began = time.perf_counter()
    run = read_run(copy)
    read_s = time.perf_counter() - began
    draw_s, page_mb = _draw(run)
    return f"| {steps:,} | {evaluations} | {read_s:.2f} | {draw_s:.1f} | {page_mb:.2f} |"


def _draw(run) -> tuple[float, float]:
    began = time.perf_counter()
    html = page.render([run])
    return time.perf_counter() - began, len(html.encode()) / 1e6


def _lengthened(source: Path, copy: Path, steps: int) -> int:
    """`copy` of `source` with `steps` training lines and an evaluation every steps / 10."""
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns("checkpoints", "hf", "ray"))
    lines = _lines(source)
    trained = itertools.cycle([m for m in lines if "loss" in m])
    evals = itertools.cycle([m for m in lines if "loss" not in m])
    every = max(steps // 10, 1)
    written = []
    for step in range(1, steps + 1):
        written.append({**next(trained), "step": step})
        if step % every == 0:
            written.append({**next(evals), "step": step})
    (copy / METRICS_FILE).write_text("".join(json.dumps(m) + "\n" for m in written))
    return steps // every


if __name__ == "__main__":
    main()
