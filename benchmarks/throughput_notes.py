"""The notes under `python benchmarks/throughput.py`'s table: what was run (device,
rounds, model, data, budget, micro batches), how each column is measured, and what each
contender runs."""

from __future__ import annotations

import os

import torch
from common import median
from throughput_contenders import PACKED_ROWS, Setup

ZERO_STAGE = 2  # the repository default (parallelism=zero2), as ours runs


def model_note(setup: Setup) -> str:
    data = setup.data
    counts = (
        f"{len(data):,} examples, {int(data.lengths().sum()):,} tokens, "
        f"{int((data.weights > 0).sum()):,} trained by our loss mask"
    )
    common = (
        f"through prepare_run (data.max_seq_len={setup.cfg.data.max_seq_len}): the same "
        "token ids for every contender except TRL, which tokenizes the same conversations "
        "itself."
    )
    if setup.source is None:
        return (
            "- Model: the tiny Llama (4 layers, hidden 128, built-in BPE tokenizer, ChatML), "
            f"random init from the same seed for every contender. Data: alpaca_en_demo.json "
            f"({counts}) {common}"
        )
    return (
        "- Model: SmolLM2-135M-Instruct (30 layers, 49,152-token vocabulary, its tokenizer "
        "and chat template), the same pretrained weights for every contender. Data: "
        f"data=suite_alpaca_mix, the built-in suite with alpaca_en_demo.json ({counts}) "
        f"{common}"
    )


def setup_notes(setup: Setup, results: dict[str, list[dict]], rounds: int) -> list[str]:
    """The device, rounds, model, data, budget and micro batches of this run."""
    device = setup.device
    hardware = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"
    )
    measured = [len(rs) for rs in results.values() if rs]
    steps = {name: round(median(rs, "steps")) for name, rs in results.items() if rs}
    return [
        f"Device: {hardware}; precision {setup.precision}; one process, one-rank process group "
        f"for ours (DeepSpeed ZeRO stage {ZERO_STAGE}); Trainer/TRL without DeepSpeed. "
        f"Rounds: {rounds} interleaved (contenders in table order), the first dropped as "
        f"warm-up; medians over {min(measured, default=0)} measured round(s). Each run in "
        "a process of its own.",
        model_note(setup),
        f"- Budget: every contender trains until it has fed the model {setup.budget:,} real "
        "(non-padding) tokens; the step that crosses the budget is the last (median steps per run: "
        + "; ".join(f"{name}: {n}" for name, n in steps.items())
        + "). Not the same examples: packed and padded orders differ.",
        f"- Micro batches (1 accumulation step): packed contenders (ours, TRL) {PACKED_ROWS} "
        f"rows of {setup.cfg.data.max_seq_len} slots; padded ones (ours padded, HF, TRL "
        f"padding-free) {setup.padded_examples} "
        f"examples = round({PACKED_ROWS} x real tokens per packed row / mean example length), "
        "so each optimizer step holds about the same real tokens.",
    ]


def column_notes() -> list[str]:
    """How each column is measured."""
    return [
        "- slot efficiency = real tokens / token slots (input_ids.numel()) over every batch "
        "the contender fed the model. tokens/s = real tokens of steps 2..n / wall time from "
        "the end of step 1 to the end of step n (includes data loading and the optimizer); "
        "trained tokens/s counts positions with a label (labels[:, 1:] != -100). Peak "
        "memory: the run's process, resident set at its peak (CPU) or allocated at its "
        "peak (GPU), model, optimizer and libraries included.",
        "- speed ratio = tokens/s / tokens/s of ours, padded in the same round, median over "
        "rounds; realisation factor = speed ratio / slot-efficiency ratio, per round, "
        "median (how much of the packing gain becomes speed; target >= 0.95, packed rows "
        "only). Time to first step: from the start of the contender's "
        "set-up (model, engine or Trainer, data set / TRL's tokenization and packing) to the "
        "end of its first optimizer step; ours reads the prepared artifact (prepare_run ran "
        "once before the rounds) and skips framework.train.loop.train's packing self-check.",
    ]


def contender_notes(setup: Setup) -> list[str]:
    """What each contender runs."""
    return [
        "- ours: framework.train.step.train_step over framework.data.loader.RankBatches, "
        "DeepSpeed engine from framework.train.engine. packed = best-fit decreasing rows, "
        "per-document SDPA (document_sdpa), the loss at trained positions in chunks "
        "(loss.positions=trained, the default); full-logit loss = the same with "
        "the LM head and cross-entropy at every position (loss.positions=all); "
        "padded = data.packing=false (length-grouped, "
        "padded to each batch's longest); dense block mask = packed rows with attention "
        "sdpa, where transformers builds a block-diagonal mask over each whole row from the "
        "restarting position ids.",
        "- HF Trainer: transformers.Trainer on our artifact's token ids (labels = our loss "
        "mask), DataCollatorForSeq2Seq padding to the longest example of each batch, random "
        "order (train_sampling_strategy='random', transformers 5's name for "
        "group_by_length=False), attention sdpa with the padding mask; TRL and HF: AdamW "
        "(torch), our lr, warmup, clipping and seed, a model built like ours (fp32 weights; "
        "bf16 autocast on GPUs), report_to=[], no eval, no logging, no saving.",
        "- TRL SFTTrainer: packing=True (bfd: best-fit decreasing, padding-free: each micro "
        "batch's rows concatenated into one sequence with restarting position ids), "
        "or padding_free=True without packing (each micro batch's examples concatenated), "
        f"max_length={setup.cfg.data.max_seq_len}, attention document_sdpa (TRL recommends "
        "flash attention for padding-free batches; on CPU document_sdpa is the "
        "per-document equivalent, so it attends like ours, packed). TRL computes its loss "
        "at labelled positions only in chunks (its fused LM head), and entropy and token "
        "accuracy every step for its logs.",
    ]


def notes(
    setup: Setup, results: dict[str, list[dict]], problems: dict[str, str], rounds: int
) -> list[str]:
    lines = [*setup_notes(setup, results, rounds), *column_notes(), *contender_notes(setup)]
    lines += [f"- {name}: {text}" for name, text in problems.items()]
    if setup.device.type != "cuda":
        lines.append("- MFU: n/a on CPU (no known peak FLOP/s).")
    else:
        lines.append(
            "- MFU = framework.train.metrics.ModelShape.train_flops(real tokens, sum of "
            "squared example lengths) of steps 2..n / their wall time / the GPU's peak "
            "(framework.train.metrics.peak_flops), for every contender alike."
        )
    return lines
