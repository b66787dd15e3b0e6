"""python benchmarks/gpu_check.py [--rehearse-on-cpu]   (run through benchmarks/gpu_check.sh)

The GPU path on one GPU, in a few minutes, as one table: `framework.train.loop.train`
under torchrun (benchmarks/torchrun_train.py: no Ray, whose wheel is too big to carry to
a lent GPU machine), on a random-init Llama of about 0.6B parameters (hidden 2048, 12
layers, 16 / 8 heads: no weights to carry) trained on the built-in suite packed into rows
of 4,096 tokens, bf16, the packing self-check on. The runs:

- ZeRO-2, per-document SDPA, 8 steps with a checkpoint at step 4 (and 8);
- the same run resumed from that step-4 checkpoint: its losses at steps 5-8 against the
  straight run's (exact resume);
- ZeRO-2 with FlexAttention; ZeRO-2 with flash-attn's varlen kernel where flash-attn is
  installed; ZeRO-3 (auto attention); LoRA under ZeRO-2 (auto attention).

Each row: the attention kernel the run reported, median step time and tokens/s (steps
after the first), MFU, peak GPU memory, the final loss, and what was checked. The table
goes to stdout and to benchmarks/results/gpu_check.md (and to $OUT when set, which the
lent machine sends back). `--rehearse-on-cpu` runs the same sequence on this CPU with a
tiny model and rows of 256 tokens, to check the script itself; its table is no GPU result
and is not written to the results page.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, arg_parser, progress, table_header, write_results_page

STEPS, SAVE_AT = 8, 4
GPU_MODEL = [
    "model.hidden_size=2048",
    "model.intermediate_size=5632",
    "model.num_layers=12",
    "model.num_heads=16",
    "model.num_kv_heads=8",
    "model.vocab_size=8192",
    "data.max_seq_len=4096",
    "trainer.micro_batch_size=2",
    "trainer.precision=bf16",
    "cluster.use_gpu=true",
]
CPU_REHEARSAL = ["data.max_seq_len=256", "trainer.micro_batch_size=2", "trainer.precision=fp32"]
COMMON = [
    "model=tiny_llama",
    "cluster.num_workers=1",
    "logger=none",
    f"trainer.max_steps={STEPS}",
    f"checkpoint.every={SAVE_AT}",
    "trainer.log_every=1",
    "trainer.warmup_steps=2",
    "trainer.lr=3e-4",
    "eval.every=0",
    "eval.samples=0",
    "eval.suite_per_family=0",
    "run.report=false",
]


def versions() -> str:
    import importlib.metadata

    names = ("torch", "transformers", "deepspeed", "peft", "flash-attn")
    found = []
    for name in names:
        try:
            found.append(f"{name} {importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"no {name}")
    return ", ".join(found)


def flash_attn_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("flash_attn") is not None


def runs(gpu: bool, trained: Path) -> list[tuple[str, list[str]]]:
    """(label, overrides) of each run after the straight one and its resume. LoRA adapts
    `trained` (the straight run's export): adapters need weights to adapt."""
    chosen = [
        ("ZeRO-2, flex_attention", ["parallelism=zero2", "model.attention=flex_attention"]),
        ("ZeRO-3, auto attention", ["parallelism=zero3"]),
        (
            "ZeRO-2, LoRA, auto attention",
            ["parallelism=zero2", "adapter=lora", f"model.name_or_path={trained}"],
        ),
    ]
    if gpu and flash_attn_installed():
        chosen.insert(1, ("ZeRO-2, flash_attention_2", ["model.attention=flash_attention_2"]))
    if not gpu:  # FlexAttention has no backward on CPU
        chosen = chosen[1:]
    return chosen


def train(run_dir: Path, overrides: list[str], seed_checkpoint: Path | None = None) -> dict:
    """Prepare and train one run under torchrun; what its log and metrics.jsonl say."""
    script = ROOT / "benchmarks" / "torchrun_train.py"
    python = sys.executable
    log = run_dir.with_suffix(".log")
    prepare = [python, str(script), "--prepare", f"run.output_dir={run_dir}", *overrides]
    with log.open("w") as out:
        done = subprocess.run(prepare, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode != 0:
            raise SystemExit(f"{run_dir.name}: preparing failed:\n{log.read_text()[-4000:]}")
        if seed_checkpoint is not None:  # resume: the straight run's checkpoint, copied
            shutil.copytree(seed_checkpoint, run_dir / "checkpoints" / seed_checkpoint.name)
        launch = [python, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
        start = time.monotonic()
        done = subprocess.run(
            [*launch, str(script), str(run_dir)], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    text = log.read_text()
    if done.returncode != 0:
        raise SystemExit(f"{run_dir.name} failed (exit {done.returncode}):\n{text[-4000:]}")
    steps = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in steps if "step_time_s" in m]
    timed = steps[1:] or steps  # the first step warms up (and compiles)
    return {
        "wall_s": time.monotonic() - start,
        "losses": {m["step"]: m["loss"] for m in steps},
        "step_time_s": statistics.median(m["step_time_s"] for m in timed),
        "tokens_per_s": statistics.median(m["tokens_per_s"] for m in timed),
        "mfu": statistics.median(m["mfu"] for m in timed) if "mfu" in timed[0] else None,
        "peak_memory_gb": max(m["peak_memory_gb"] for m in steps),
        "attention": next(
            (line.split(" (")[0] for line in text.splitlines() if line.startswith("attention:")),
            "attention: not reported",
        ),
        "self_check": "packing self-check passed" in text,
    }


def row(label: str, result: dict, checked: str) -> str:
    """The table's line for one run, also printed at once (a run cut short by the time
    limit still shows the rows before it)."""
    mfu = f"{result['mfu']:.1%}" if result["mfu"] is not None else "n/a"
    final = result["losses"][max(result["losses"])]
    progress(f"{label}: done in {result['wall_s']:.0f} s")
    return (
        f"| {label} | {result['attention'].removeprefix('attention: ')} | "
        f"{result['step_time_s']:.3f} | {result['tokens_per_s']:,.0f} | {mfu} | "
        f"{result['peak_memory_gb']:.1f} | {final:.4f} | {checked} |"
    )


def main() -> None:
    parser = arg_parser(__doc__, "gpu_check")
    parser.add_argument("--rehearse-on-cpu", action="store_true")
    args = parser.parse_args()
    import torch

    gpu = not args.rehearse_on_cpu
    if gpu and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu_check.py needs an NVIDIA GPU: this machine has none")
    base = COMMON + (GPU_MODEL if gpu else CPU_REHEARSAL)
    lines = table_header(
        "run", "attention", "step s", "tokens/s", "MFU", "peak GB", "final loss", "checked"
    )
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        straight = train(work / "straight", [*base, "parallelism=zero2"])
        selfcheck = "self-check passed" if straight["self_check"] else "SELF-CHECK MISSING"
        lines.append(row("ZeRO-2, straight", straight, selfcheck))
        step = work / "straight" / "checkpoints" / f"step_{SAVE_AT:08d}"
        resumed = train(work / "resumed", [*base, "parallelism=zero2"], seed_checkpoint=step)
        gaps = [abs(resumed["losses"][s] - straight["losses"][s]) for s in resumed["losses"]]
        exact = "exact" if max(gaps) == 0 else f"max loss gap {max(gaps):.2e}"
        lines.append(row(f"ZeRO-2, resumed at step {SAVE_AT}", resumed, exact))
        for label, overrides in runs(gpu, work / "straight" / "hf"):
            result = train(work / label.replace(" ", "").replace(",", "_"), base + overrides)
            lines.append(row(label, result, "self-check passed" if result["self_check"] else ""))
    device = torch.cuda.get_device_name() if gpu else "CPU rehearsal (tiny model: no GPU result)"
    page = [f"{device}; {versions()}; the suite packed into rows, {STEPS} steps a run.", "", *lines]
    if not gpu:
        print("\n".join(page))
        return
    write_results_page(args.out, "The GPU check (benchmarks/gpu_check.sh)", page)
    if os.environ.get("OUT"):
        shutil.copy(args.out, os.environ["OUT"])


if __name__ == "__main__":
    main()
