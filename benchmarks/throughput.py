"""python benchmarks/throughput.py [--model smollm2]

Training throughput side by side, one process per run: our loop (packed, packed with the
full-logit loss, padded, packed with a dense block mask) against the Hugging Face Trainer
and TRL's SFTTrainer (packing, padding-free), on the same model, tokens and data, in
interleaved rounds (the first one a warm-up). Run from the repository root; needs
`.[bench]`:

    python benchmarks/throughput.py                  # the tiny Llama on alpaca: ~10 min
    python benchmarks/throughput.py --model smollm2  # SmolLM2-135M, suite + alpaca: ~25 min
    python benchmarks/throughput.py --quick          # a smoke run of a minute or two

Writes one markdown table (per contender: slot efficiency, trained tokens/s, tokens/s,
speed ratio and realisation factor against ours padded, time to first step, peak resident
memory, MFU) with notes on what was run and how each column is measured to its results
page (--out) and stdout; progress goes to stderr. fp32 on CPUs, the runs' automatic
precision on GPUs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import queue as queue_module
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from common import (
    DATA_OVERRIDES,
    arg_parser,
    bench_workdir,
    median,
    progress,
    table_header,
    write_results_page,
)
from throughput_contenders import (
    PACKED_ROWS,
    Run,
    Setup,
    hf_trainer,
    ours_packed,
    ours_packed_dense_mask,
    ours_packed_full_logits,
    ours_padded,
    trl_padding_free,
    trl_sft,
)
from throughput_notes import ZERO_STAGE, notes

from framework.commands.compose import compose_train_config
from framework.commands.prepare import prepare_run
from framework.data.cache import first_plan
from framework.data.dataset import TokenizedDataset
from framework.data.formats import ErrorPolicy
from framework.data.sources import load_data
from framework.hf.resolve import model_source
from framework.model.precision import auto_precision
from framework.run.files import TOKENIZER_DIR
from framework.train.metrics import peak_flops, peak_memory_gb

SEED = 1234  # the trainer default; the artifact and every sampler use it
THREADS = min(2, os.cpu_count() or 1)  # torch threads of the one process
# What each --model trains on, its real tokens per contender run and rounds (the first a
# warm-up): the tiny random-init Llama on alpaca, or the default run's model on the suite
# mixed with alpaca at its preset's 512-token rows.
MODELS = {
    "tiny": {"overrides": DATA_OVERRIDES, "tokens": 122_880, "rounds": 4},
    "smollm2": {
        "overrides": ["model=smollm2_135m", "data=suite_alpaca_mix", "logger=none"],
        "tokens": 8_192,
        "rounds": 3,
    },
}
QUICK = {"tokens": 6_000, "rounds": 2}
BASELINE = "ours, padded"
DENSE = "ours, packed, dense block mask (sdpa)"
CONTENDERS: dict[str, Callable[[Setup], Run]] = {
    "ours, packed": ours_packed,
    "ours, packed, full-logit loss (loss.positions=all)": ours_packed_full_logits,
    BASELINE: ours_padded,
    DENSE: ours_packed_dense_mask,
    "HF Trainer, dynamic padding": hf_trainer,
    "TRL SFTTrainer, packing=True": trl_sft,
    "TRL SFTTrainer, padding_free=True": trl_padding_free,
}
HF = "HF Trainer, dynamic padding"
UNPACKED = {BASELINE, HF}
# Not run on the real model, and why (printed with the notes).
REAL_SKIPPED = {
    DENSE: "its cost is shown on the tiny model; on the real one it would only lengthen the run",
    HF: "in the first run of this benchmark (2 Dec 2026, commit 9a9355d) its process was "
    "killed by the kernel's OOM killer at 23 GB resident on this 24 GB machine: dynamic "
    "padding of micro batches in random order pads every example to the batch's longest "
    "(alpaca replies), and transformers computes fp32 logits for every slot",
}


# --------------------------------------------------------------------------- set-up


def make_setup(workdir: Path, budget: int, model: str) -> Setup:
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cfg = compose_train_config(
        [
            *MODELS[model]["overrides"],
            f"run.output_dir={workdir / 'run'}",
            f"run.cache_dir={workdir / 'cache'}",
            "cluster.num_workers=1",
            f"parallelism.zero_stage={ZERO_STAGE}",
            f"trainer.micro_batch_size={PACKED_ROWS}",
            f"trainer.seed={SEED}",
        ]
    )
    prepared = prepare_run(cfg)
    cfg = prepared.cfg
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(cfg.run.output_dir) / TOKENIZER_DIR)
    data = TokenizedDataset.load(prepared.artifact, "train")
    records = load_data(cfg.data, cfg.trainer.seed, ErrorPolicy(cfg.data.on_error)).train
    # Padded micro batches hold as many examples as a packed micro batch does on average,
    # so every contender's optimizer step sees about the same number of real tokens.
    plan = first_plan(prepared.artifact)
    tokens_per_row = data.lengths().sum() / len(plan)
    padded_examples = max(1, round(PACKED_ROWS * tokens_per_row / data.lengths().mean()))
    return Setup(
        cfg=cfg,
        source=model_source(cfg),  # checked by prepare_run
        tokenizer=tokenizer,
        artifact=prepared.artifact,
        data=data,
        records=records,
        device=device,
        # fp32 on CPUs, as the comparison asks; GPUs: what our runs choose there.
        precision=auto_precision(device)[0] if device.type == "cuda" else "fp32",
        budget=budget,
        padded_examples=padded_examples,
        workdir=workdir,
    )


# --------------------------------------------------------------------------- measuring


def summary(run: Run, peak: float | None) -> dict[str, float]:
    """Throughput over steps 2..n (wall time from the end of step 1 to the end of step n),
    slot efficiency over every step, time to the end of step 1."""
    if len(run.steps) < 2:
        raise RuntimeError(f"only {len(run.steps)} step(s) ran: raise --tokens")
    seconds = run.step_ends[-1] - run.step_ends[0]
    measured = run.steps[1:]
    tokens = sum(s["tokens"] for s in measured)
    out = {
        "efficiency": sum(s["tokens"] for s in run.steps) / sum(s["slots"] for s in run.steps),
        "tokens_per_s": tokens / seconds,
        "trained_per_s": sum(s["trained"] for s in measured) / seconds,
        "first_step_s": run.step_ends[0] - run.started,
        "steps": len(run.steps),
        "tokens": run.tokens,
    }
    if peak and run.shape is not None:
        flops = run.shape.train_flops(tokens, sum(s["sum_sq"] for s in measured))
        out["mfu"] = flops / seconds / peak
    return out


def _contender_process(name: str, workdir: Path, budget: int, model: str, queue) -> None:
    """One contender run in this fresh process: (summary with the process's peak memory,
    note, None), or (None, "", why it could not run)."""
    torch.set_num_threads(THREADS)
    with contextlib.redirect_stdout(sys.stderr):  # keep the parent's stdout for the table
        setup = make_setup(workdir, budget, model)  # the prepared artifact, from the cache
        try:
            run = CONTENDERS[name](setup)
            result = summary(run, peak_flops(setup.device, None))
        except Exception as error:  # a contender that cannot run becomes a row
            queue.put((None, "", f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"))
            return
    result["peak_gb"] = peak_memory_gb(setup.device)
    queue.put((result, run.note, None))


def run_contender(name: str, setup: Setup, model: str) -> tuple[dict | None, str, str | None]:
    """A contender in a process of its own, so that its peak memory is its own. A process
    that dies without a result (the kernel's OOM killer) becomes an error row."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    args = (name, setup.workdir, setup.budget, model, queue)
    process = context.Process(target=_contender_process, args=args)
    process.start()
    while True:
        try:
            outcome = queue.get(timeout=5)
            break
        except queue_module.Empty:
            if not process.is_alive():
                return None, "", f"its process died (exit code {process.exitcode})"
    process.join()
    return outcome


def interleaved(
    setup: Setup, rounds: int, model: str, names: list[str]
) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Rounds of A B C D E; the first (warm-up) round is dropped. Returns each contender's
    measured summaries and, for those that could not run, why."""
    results: dict[str, list[dict]] = {name: [] for name in names}
    failed: dict[str, str] = {}
    notes: dict[str, str] = {}
    for round_index in range(rounds):
        for name in names:
            if name in failed:
                continue
            result, note, error = run_contender(name, setup, model)
            if error:
                failed[name] = error
                progress(f"failed: {name}: {error}")
                continue
            if note:
                notes[name] = note
            if round_index > 0:
                results[name].append(result)
            label = "warm-up" if round_index == 0 else f"round {round_index}"
            progress(
                f"{label}: {name}: {result['tokens_per_s']:,.0f} tokens/s, "
                f"{result['steps']} steps, first step {result['first_step_s']:.2f} s, "
                f"peak {result['peak_gb']:.2f} GB"
            )
    return results, {**notes, **{k: f"not run: {v}" for k, v in failed.items()}}


# --------------------------------------------------------------------------- report


def throughput_table(results: dict[str, list[dict]], problems: dict[str, str]) -> list[str]:
    lines = table_header(
        "contender",
        "slot efficiency",
        "trained tokens/s",
        "tokens/s",
        "speed ratio",
        "realisation factor",
        "time to first step (s)",
        "peak memory (GB)",
        "MFU",
    )
    base = results.get(BASELINE) or []
    for name in results:
        if not results[name]:
            lines.append(f"| {name} | {problems.get(name, 'no measured round')} | | | | | | | |")
            continue
        rs = results[name]
        speed, eff = median(rs, "tokens_per_s"), median(rs, "efficiency")
        # Ratios within each round (the runs next to each other in time), then the median.
        pairs = list(zip(rs, base, strict=False))
        ratios = [r["tokens_per_s"] / b["tokens_per_s"] for r, b in pairs]
        realised = [
            r["tokens_per_s"] / b["tokens_per_s"] / (r["efficiency"] / b["efficiency"])
            for r, b in pairs
        ]
        ratio = f"{statistics.median(ratios):.3f}" if pairs else "n/a"
        packed = name not in UNPACKED
        realisation = f"{statistics.median(realised):.3f}" if pairs and packed else "—"
        mfu = f"{median(rs, 'mfu'):.1%}" if "mfu" in rs[0] else "n/a"
        lines.append(
            f"| {name} | {eff:.2%} | {median(rs, 'trained_per_s'):,.0f} | {speed:,.0f} "
            f"| {ratio} | {realisation} | {median(rs, 'first_step_s'):.2f} "
            f"| {median(rs, 'peak_gb'):.2f} | {mfu} |"
        )
    return lines


def main() -> None:
    parser = arg_parser(__doc__, "throughput", "a smoke run of a minute or two")
    parser.add_argument("--model", choices=sorted(MODELS), default="tiny")
    parser.add_argument("--tokens", type=int, help="real tokens per contender run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds, the first is warm-up")
    args = parser.parse_args()
    mode = QUICK if args.quick else MODELS[args.model]
    budget, rounds = args.tokens or mode["tokens"], args.rounds or mode["rounds"]
    names = [n for n in CONTENDERS if not (args.model != "tiny" and n in REAL_SKIPPED)]
    with bench_workdir("bench-throughput-") as workdir:
        setup = make_setup(workdir, budget, args.model)
        results, problems = interleaved(setup, rounds, args.model, names)
        if args.model != "tiny":
            problems |= {name: f"not run: {why}" for name, why in REAL_SKIPPED.items()}
        body = [*throughput_table(results, problems), "", *notes(setup, results, problems, rounds)]
    write_results_page(args.out, "Training throughput side by side", body)


if __name__ == "__main__":
    main()
