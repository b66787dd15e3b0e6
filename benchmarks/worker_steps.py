"""python benchmarks/worker_steps.py --table zero|choices|preference

The real model's training step on this machine's two cores, as the default run's two
workers take it but without Ray: two gloo ranks, each a DeepSpeed engine over
SmolLM2-135M-Instruct (framework.train.engine.build_training_engine) stepping through
the default run's batches (framework.data.loader.run_batches, framework.train.step.
train_step) with no checkpoints or evaluations. Peak resident memory per worker (the
larger of the two ranks') and tokens/s over steps 2..n (the median step time).

    python benchmarks/worker_steps.py --table zero      # ZeRO 0-3, full and LoRA: ~12 min
    python benchmarks/worker_steps.py --table choices   # CPU settings, ZeRO-2: ~10 min
    python benchmarks/worker_steps.py --table preference  # DPO on dpo_demo: ~20 min

- zero: ZeRO stages 0, 1, 2 and 3, full fine-tuning and LoRA (the default precision).
- choices: what each setting buys over the default run (ZeRO-2, full fine-tuning): the
  loss at trained positions or over all logits, torch threads per worker (Ray gives
  each worker as many as its CPUs: 1), gradient checkpointing, torch.compile.
- preference: DPO steps on data=dpo_demo's pairs (one 2,048-token row per micro batch):
  packed pairs against padded ones (one pair per row, 2 rows per micro batch padded to
  the longer), and the precomputed reference against a live one; the reference pass's
  one-time cost is the `reference` column (computed in the first row, read back after).
  80 of the 300 pairs (a sample by seed), so that the reference pass takes minutes.

Each table is a results page of its own, worker_steps_<table>.md in benchmarks/results.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import (
    RESULTS_DIR,
    arg_parser,
    bench_workdir,
    free_port,
    progress,
    table_header,
    write_results_page,
)

from framework.commands.compose import compose_train_config
from framework.commands.prepare import prepare_run
from framework.data.loader import run_batches
from framework.run.files import TOKENIZER_DIR, artifact_path
from framework.train.engine import build_training_engine
from framework.train.objective import build_objective
from framework.train.reference import prepare_reference
from framework.train.step import train_step

WORLD = 2
STEPS = {
    "zero": 2,
    "choices": 5,
    "preference": 5,
}  # the memory peak comes at the start; speed: 4 measured
BASE = ["model=smollm2_135m", "logger=none", "trainer.verify_packing=false"]
DPO = ["objective=dpo", "data=dpo_demo", "trainer.micro_batch_size=1"]
PAIR_SAMPLES = 80  # of dpo_demo's 300 pairs, 72 after its eval tenth
# name -> (overrides, torch threads per worker, torch.compile)
TABLES = {
    "zero": {
        f"ZeRO-{stage}, {method}": ([f"parallelism=zero{stage}", f"adapter={method}"], 1, False)
        for method in ("none", "lora")
        for stage in (0, 1, 2, 3)
    },
    "choices": {
        "default run (trained positions, 1 thread)": ([], 1, False),
        "full-logit loss (loss.positions=all)": (["loss.positions=all"], 1, False),
        "2 threads per worker": ([], 2, False),
        "gradient checkpointing": (["model.gradient_checkpointing=true"], 1, False),
        "torch.compile": ([], 1, True),
    },
    "preference": {
        "DPO, packed pairs, precomputed reference": (DPO, 1, False),
        "DPO, packed pairs, live reference": ([*DPO, "objective.reference=live"], 1, False),
        "DPO, padded pairs (one per row), precomputed": (
            [*DPO, "data.packing=false", "trainer.micro_batch_size=2"],
            1,
            False,
        ),
    },
}

TITLES = {
    "zero": "The real model's step by ZeRO stage, full fine-tuning and LoRA",
    "choices": "What each CPU setting buys the real model's step",
    "preference": "DPO steps: packed vs padded pairs, precomputed vs live reference",
}


def _rank(rank: int, port: int, cfg, threads: int, compiled: bool, steps: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(threads)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(cfg.run.output_dir) / TOKENIZER_DIR)
    device = torch.device("cpu")
    engine, _zero3 = build_training_engine(
        cfg, tokenizer, rank=rank, world_size=WORLD, device=device, universal=False
    )
    if compiled:
        engine.compile()
    artifact = artifact_path(cfg.run.output_dir)
    batches = run_batches(artifact, cfg, rank=rank, world_size=WORLD, pad_id=tokenizer.pad_token_id)
    began = time.perf_counter()
    reference = None
    if cfg.objective.needs_reference:
        reference = prepare_reference(
            cfg, engine, tokenizer, artifact, rank=rank, world=WORLD, device=device
        )
        batches.reference = reference.logps.get("train")
    reference_s = time.perf_counter() - began
    batches = iter(batches)
    objective = build_objective(cfg, reference.live if reference else None)
    timed = []
    for _ in range(steps):
        began = time.perf_counter()
        metrics = train_step(
            engine, batches, cfg.trainer.grad_accum_steps, device, objective=objective
        )
        timed.append(
            {k: metrics[k] for k in ("tokens", "packing_efficiency")}
            | {"seconds": time.perf_counter() - began}
        )
    peak = torch.tensor(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if rank == 0:
        result = {"steps": timed, "peak_gb": peak.item(), "reference_s": reference_s}
        Path(out).write_text(json.dumps(result))
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # as tests.helpers.spawn: skip a teardown that rarely aborts a rank


def run_variant(work: Path, overrides: list[str], threads: int, compiled: bool, steps: int):
    cfg = compose_train_config(
        [*BASE, f"run.output_dir={work / 'run'}", f"run.cache_dir={work / 'cache'}", *overrides]
    )
    if cfg.objective.pairs:  # a reference pass over every pair would take a quarter hour
        cfg.data.sources[0].max_samples = PAIR_SAMPLES
    cfg = prepare_run(cfg).cfg
    out = work / "result.json"
    out.unlink(missing_ok=True)
    args = (free_port(), cfg, threads, compiled, steps, str(out))
    mp.spawn(_rank, args=args, nprocs=WORLD, join=True)
    result = json.loads(out.read_text())
    measured = result["steps"][1:]
    step = statistics.median(s["seconds"] for s in measured)
    tokens = statistics.median(s["tokens"] for s in measured)
    return {
        "tokens_per_s": tokens / step,
        "step_s": step,
        "first_step_s": result["steps"][0]["seconds"],
        "peak_gb": result["peak_gb"],
        "slot_efficiency": sum(s["tokens"] for s in measured)
        / sum(s["tokens"] / s["packing_efficiency"] for s in measured),
        "reference_s": result["reference_s"],
    }


def main() -> None:
    parser = arg_parser(__doc__, "worker_steps_TABLE", "2 variants of the table only")
    parser.add_argument("--table", choices=sorted(TABLES), required=True)
    args = parser.parse_args()
    if args.out == parser.get_default("out"):  # a page per table
        args.out = RESULTS_DIR / f"worker_steps_{args.table}.md"
    variants = list(TABLES[args.table].items())[: 2 if args.quick else None]
    with bench_workdir("bench-worker-steps-") as work:
        lines = table_header(
            "variant", "tokens/s", "vs first row", "median step", "first step",
            "peak RSS/worker", "slot efficiency", "reference",
        )  # fmt: skip
        first = None
        for name, (overrides, threads, compiled) in variants:
            progress(name)
            r = run_variant(work, overrides, threads, compiled, STEPS[args.table])
            first = first or r
            ratio = r["tokens_per_s"] / first["tokens_per_s"]
            lines.append(
                f"| {name} | {r['tokens_per_s']:,.0f} | {ratio:.2f}x "
                f"| {r['step_s']:.1f} s | {r['first_step_s']:.1f} s | {r['peak_gb']:.2f} GB "
                f"| {r['slot_efficiency']:.1%} | {r['reference_s']:.0f} s |"
            )
            progress(lines[-1])
    conditions = (
        f"{WORLD} gloo ranks on {os.cpu_count()} cores, {STEPS[args.table]} steps each "
        "(the first excluded from tokens/s), the default run's data, micro batch and "
        "precision; wall times."
    )
    write_results_page(args.out, TITLES[args.table], [conditions, "", *lines])


if __name__ == "__main__":
    main()
