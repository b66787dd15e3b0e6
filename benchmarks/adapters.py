"""Full fine-tuning vs LoRA vs DoRA on the real model (SmolLM2-135M-Instruct), on this
machine's CPUs, with the default run's data, steps and 2 Ray workers, under ZeRO-2 and
ZeRO-3: tokens/s, peak resident memory per worker, checkpoint size, trainable
parameters, and the in-run suite scores after the last step (trained families, held-out
knowledge, held-out twists; 4 validation items per family).

    python benchmarks/adapters.py --work /tmp/adapters                 # 6 runs
    python benchmarks/adapters.py --work /tmp/adapters --zero 2 --methods none,lora
    python benchmarks/adapters.py --work /tmp/adapters --methods lora --lrs 2e-4,1e-3,2e-3

Every run is launch/train.py (model=smollm2_135m adapter=<method> parallelism=zero<N>);
each method at its own default learning rate (the preset's 2e-4 for full fine-tuning,
conf/adapter/lora.yaml's for LoRA and DoRA) unless --lrs gives others. A finished run in
--work is reused.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch
from common import arg_parser, table_header, write_results_page
from transformers import AutoConfig, AutoModelForCausalLM

from framework.config.schema import DEFAULT_CACHE_DIR, AdapterConfig, ModelConfig
from framework.hf.resolve import resolve_model
from framework.model.adapters import prepare_for_training
from framework.run.files import HF_DIR, SUMMARY_FILE

ROOT = Path(__file__).resolve().parents[1]
MODEL = "smollm2_135m"
SUITE = ("trained", "held_out_knowledge", "held_out_twists")


def train(out: Path, method: str, zero: int, lr: str | None) -> Path:
    if not (out / HF_DIR).is_dir():
        overrides = [f"model={MODEL}", f"adapter={method}", f"parallelism=zero{zero}"]
        overrides += [f"run.output_dir={out}", "logger=none"]
        overrides += [f"trainer.lr={lr}"] if lr else []
        print(f"training {out.name}: {' '.join(overrides)}", file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "launch/train.py", *overrides], cwd=ROOT, check=True)
    return out


def trainable_parameters(method: str) -> tuple[int, int]:
    """(trainable, total) parameters of the model `method` trains, built on the meta device."""
    config = AutoConfig.from_pretrained(resolve_model(MODEL, DEFAULT_CACHE_DIR))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
        model = prepare_for_training(model, ModelConfig(), AdapterConfig(method=method))
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def checkpoint_bytes(out: Path) -> int:
    newest = sorted((out / "checkpoints").glob("step_*"))[-1]
    return sum(f.stat().st_size for f in newest.rglob("*") if f.is_file())


def main() -> None:
    parser = arg_parser(__doc__, "adapters")
    parser.add_argument("--work", required=True, help="directory for the runs")
    parser.add_argument("--methods", default="none,lora,dora")
    parser.add_argument("--zero", default="2,3", help="ZeRO stages")
    parser.add_argument("--lrs", default=None, help="learning rates to try (default: each's own)")
    args = parser.parse_args()
    work = Path(args.work)
    rows = []
    for zero in map(int, args.zero.split(",")):
        for method in args.methods.split(","):
            for lr in args.lrs.split(",") if args.lrs else [None]:
                name = f"{method}-zero{zero}" + (f"-lr{lr}" if lr else "")
                out = train(work / name, method, zero, lr)
                rows.append((name, method, json.loads((out / SUMMARY_FILE).read_text()), out))
    columns = ["run", "trainable params", "tokens/s", "peak RSS/worker (GB)", "checkpoint"]
    columns += ["final loss", "eval loss", *(f"suite {s}" for s in SUITE)]
    lines = [
        f"{MODEL}, the default run's data and steps, 2 Ray workers; tokens/s from each run's "
        "summary.json (wall times); suite scores: normalized match.",
        "",
        *table_header(*columns),
    ]
    for name, method, summary, out in rows:
        trainable, total = trainable_parameters(method)
        cells = [
            name,
            f"{trainable / 1e6:.2f}M ({trainable / total:.2%})",
            f"{summary['tokens_per_s']:.0f}",
            f"{summary['peak_memory_gb']:.2f}",
            f"{checkpoint_bytes(out) / 2**20:.0f} MiB",
            f"{summary['final_loss']:.4f}",
            f"{summary['eval_loss']:.4f}",
            *(f"{summary[f'suite/{s}/normalized']:.1%}" for s in SUITE),
        ]
        lines.append(f"| {' | '.join(cells)} |")
    write_results_page(args.out, "Full fine-tuning vs LoRA vs DoRA", lines)


if __name__ == "__main__":
    sys.exit(main())
