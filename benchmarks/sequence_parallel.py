"""python benchmarks/sequence_parallel.py [--quick]

How long a row one worker can train within a memory budget, its rows whole (N=1) and
split across a sequence-parallel group of 2 (N=2: Ulysses attention over gloo), side by
side in one run on this machine's CPU.

The model is a slice: a random-init Llama of 2 layers, hidden 512, 8 heads over 2
key-value heads, in fp32, without gradient checkpointing. One row of L tokens, packed with
documents of 4,096 tokens (attention's cost grows with the documents, the activations
with the row), every position trained; one forward + backward of the loss as training
computes it (framework/loss/token.py: the LM head at trained positions, in chunks). Each
configuration runs in fresh processes: a warm-up step on a short row, then the measured
step. Memory is each worker's peak resident size during the measured step above what it
held before (Linux's VmHWM, reset first); time is the slowest worker's.

On paper, below the table: the same question for Llama-3 8B on 8 GPUs (bf16, ZeRO-3,
gradient checkpointing), from the sizes of what a step holds.

    python benchmarks/sequence_parallel.py            # about 10 minutes on 2 cores
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import (
    arg_parser,
    bench_workdir,
    free_port,
    progress,
    table_header,
    write_results_page,
)

from framework.config.schema import ModelConfig
from framework.config.sections import LossConfig
from framework.data.pack import collate_rows
from framework.loss.token import token_loss_fn
from framework.model.build import build_model
from framework.model.sequence_parallel import SEQUENCE_PARALLEL, SequenceParallel, split_attention
from framework.model.tokenizer import train_bpe
from framework.train.engine import join_deepspeed_comm

SLICE = ModelConfig(
    hidden_size=512,
    intermediate_size=1536,
    num_layers=2,
    num_heads=8,
    num_kv_heads=2,
    max_position_embeddings=65_536,
)
DOCUMENT_TOKENS = 4096
BUDGET_GB = 2.0  # per worker, for the step's activations
ROW_TOKENS = [8192, 16_384, 32_768, 65_536]


def packed_row(vocab: int, length: int) -> dict[str, torch.Tensor]:
    """One row of `length` tokens: documents of DOCUMENT_TOKENS (the last one shorter)."""
    lengths = [min(DOCUMENT_TOKENS, length - start) for start in range(0, length, DOCUMENT_TOKENS)]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = np.random.default_rng(0).integers(3, vocab, size=length).astype(np.int32)
    weights = np.ones(length, dtype=np.float32)
    return collate_rows(tokens, weights, offsets, [np.arange(len(lengths))], length, 0)


def _peak_rss_gb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status)[1]) / 2**20


def _step(model, batch) -> float:
    began = time.perf_counter()
    losses = token_loss_fn(model, LossConfig(chunk_tokens=1024))(
        batch["input_ids"], batch["position_ids"], batch["labels"]
    )
    losses.sum().backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - began


def measure_rank(rank: int, world: int, port: int, tokenizer_dir: str, length: int, out: str):
    from transformers import AutoTokenizer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    join_deepspeed_comm(600)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    model = build_model(SLICE, tokenizer, torch.float32)
    if world > 1:
        setattr(model, SEQUENCE_PARALLEL, SequenceParallel.join(world, 600))
        split_attention(model.config._attn_implementation)
    _step(model, packed_row(len(tokenizer), 1024))  # warm-up: kernels, allocator
    batch = packed_row(len(tokenizer), length)
    before = _peak_rss_gb()
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on
    seconds = _step(model, batch)
    record = torch.tensor([_peak_rss_gb() - before, seconds], dtype=torch.float64)
    records = [torch.zeros_like(record) for _ in range(world)]
    dist.all_gather(records, record)
    if rank == 0:
        peaks, times = zip(*(r.tolist() for r in records), strict=True)
        Path(out).write_text(json.dumps({"peak_gb": max(peaks), "seconds": max(times)}))
    dist.barrier()
    dist.destroy_process_group()


def measure(tokenizer_dir: Path, length: int, world: int, workdir: Path) -> dict[str, float]:
    out = workdir / f"{length}-{world}.json"
    mp.start_processes(
        measure_rank,
        args=(world, free_port(), str(tokenizer_dir), length, str(out)),
        nprocs=world,
        join=True,
        start_method="spawn",
    )
    return json.loads(out.read_text())


def longest(results: dict, world: int) -> str:
    fits = [
        length for (length, w), r in results.items() if w == world and r["peak_gb"] <= BUDGET_GB
    ]
    return f"{max(fits):,}" if fits else f"none of {ROW_TOKENS[0]:,}+"


# Llama-3 8B, for the estimate on paper.
LLAMA3_8B = {"params": 8.03e9, "layers": 32, "hidden": 4096, "intermediate": 14336, "kv": 1024}


def llama3_8b_gb(tokens: int, group: int, gpus: int = 8) -> dict[str, float]:
    """What one of `gpus` GPUs holds training Llama-3 8B on rows of `tokens` split across
    `group` of them: ZeRO-3 states (bf16 weights and gradients, fp32 master weights and
    Adam moments: 16 bytes a parameter, over all GPUs) and bf16 activations with gradient
    checkpointing (every layer's input kept, one layer's working set while it is
    recomputed: its q, k, v, attention output, the MLP's gate, up and product), per
    token of this GPU's slice. Logits are chunked (framework/loss/token.py): left out."""
    m = LLAMA3_8B
    states = m["params"] * 16 / gpus
    per_token = 2 * (
        m["layers"] * m["hidden"]  # checkpointed layer inputs
        + 3 * m["hidden"]
        + 2 * m["kv"]  # q, attention output, residual; k, v
        + 3 * m["intermediate"]  # gate, up, their product
    )
    activations = tokens / group * per_token
    return {"states": states / 1e9, "activations": activations / 1e9}


def paper_table() -> list[str]:
    lines = [
        "Llama-3 8B on 8 GPUs of 80 GB, on paper (`llama3_8b_gb` in this script): ZeRO-3 "
        "states per GPU, plus bf16 activations under gradient checkpointing per token of "
        "the GPU's slice; logits left out (chunked), as are allocator and communication "
        "buffers.",
        "",
        *table_header("row tokens", "sequence_parallel", "states GB", "activations GB", "total GB"),
    ]
    for tokens in (32_768, 65_536, 131_072, 262_144):
        for group in (1, 8):
            gb = llama3_8b_gb(tokens, group)
            total = gb["states"] + gb["activations"]
            lines.append(
                f"| {tokens:,} | {group} | {gb['states']:.1f} | {gb['activations']:.1f} | "
                f"{total:.1f} |"
            )
    return lines


def main() -> None:
    args = arg_parser(__doc__, "sequence_parallel", "rows of 2,048 and 4,096 tokens").parse_args()
    lengths = [2048, 4096] if args.quick else ROW_TOKENS
    with bench_workdir("sequence-parallel-") as workdir:
        tokenizer = train_bpe([f"word{i} and more text {i * 7}" for i in range(2000)], 2048)
        tokenizer.save_pretrained(workdir / "tokenizer")
        results = {}
        for length in lengths:
            for world in (1, 2):
                progress(f"{length:,} tokens, sequence_parallel={world}")
                results[length, world] = measure(workdir / "tokenizer", length, world, workdir)
    lines = [
        f"One row of L tokens (documents of {DOCUMENT_TOKENS:,}), one forward + backward of "
        f"a {SLICE.num_layers}-layer slice model (hidden {SLICE.hidden_size}, "
        f"{SLICE.num_heads} heads / {SLICE.num_kv_heads} key-value heads), fp32. Peak: each "
        "worker's resident memory during the step above what it held before; time: the "
        "slowest worker's.",
        "",
        *table_header(
            "row tokens", "N=1 peak GB", "N=1 step s", "N=2 peak GB per worker", "N=2 step s"
        ),
    ]
    for length in lengths:
        one, two = results[length, 1], results[length, 2]
        lines.append(
            f"| {length:,} | {one['peak_gb']:.2f} | {one['seconds']:.1f} | "
            f"{two['peak_gb']:.2f} | {two['seconds']:.1f} |"
        )
    lines += [
        "",
        f"Longest row within {BUDGET_GB:g} GB a worker: {longest(results, 1)} tokens whole, "
        f"{longest(results, 2)} split across 2 workers.",
        "",
        *paper_table(),
    ]
    write_results_page(args.out, "Sequence parallelism: row length within a memory budget", lines)


if __name__ == "__main__":
    main()
