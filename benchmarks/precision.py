"""The default run in fp32 and in bf16, side by side: throughput, peak memory, and the
suite's scores after the same steps (trained families, held-out knowledge and twists, on
the suite's test split, both models answering in the same dtype).

    python benchmarks/precision.py --work /tmp/precision      # about 30 minutes on 2 cores

Each run is `python launch/train.py` with trainer.precision set; `auto` picks one of the
two (framework/model/precision.py), printed at start. A finished run in --work is reused.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from common import arg_parser, write_results_page
from real_model_evidence import MODEL, evaluate, throughput_table, zero_shot_table
from suite_evidence import train

from framework.config.schema import DEFAULT_HELD_OUT
from framework.model.precision import auto_precision
from framework.run.files import HF_DIR
from framework.suite.families import FAMILIES


def run(work: Path, precision: str) -> Path:
    out = work / precision
    if not (out / HF_DIR).is_dir():
        started = time.time()
        train(out, MODEL, None, [f"trainer.precision={precision}"])
        (out / "launched_at").write_text(str(started))
    return out


def main() -> None:
    parser = arg_parser(__doc__, "precision")
    parser.add_argument("--work", required=True, help="directory for runs and evaluations")
    parser.add_argument("--per-family", type=int, default=10)
    args = parser.parse_args()
    work = Path(args.work)
    runs = {precision: run(work, precision) for precision in ("fp32", "bf16")}
    results = {
        name: evaluate(str(out / HF_DIR), work / f"{name}-eval", args.per_family)["summary"]
        for name, out in runs.items()
    }
    choice, reason = auto_precision(torch.device("cpu"))
    trained = [f for f in FAMILIES if f not in DEFAULT_HELD_OUT]
    body = [
        f"`auto` on this machine: {choice} ({reason}).",
        "",
        "## Suite scores after the same steps",
        "",
        f"The suite's test split, {args.per_family} items per family, answered in auto's "
        "dtype; normalized match (exact).",
        "",
        *zero_shot_table(results, dict.fromkeys(results, trained)),
        "",
        "## Throughput and memory (wall times)",
        "",
        *throughput_table(runs),
    ]
    write_results_page(args.out, "The default run in fp32 and in bf16", body)


if __name__ == "__main__":
    sys.exit(main())
