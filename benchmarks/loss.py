"""python benchmarks/loss.py

The loss alone, side by side: the full-logit path (loss.positions=all: the LM
head and the cross-entropy at every position) against the trained-positions path at
several chunk sizes (loss.chunk_tokens), on SmolLM2-135M's head shape (576 x
49,152), the suite's share of trained positions (11.9%), the default run's micro batch (4
rows of 512 slots, fp32 and bf16) and a long one (2 rows of 4,096, bf16) where chunks
matter. Forward and backward from the final hidden states, this machine's threads. Each
variant runs in a fresh process: its peak resident memory above what it held before the
loss (hidden states, head, labels and both gradient buffers, as training holds them) is
the memory the loss took. With the head trained, that includes the head's gradient each
backward of the head computes before adding it to the buffer (113 MB in fp32), whatever
the path. Then the memory per GPU at cluster scale (an 8B model with a 128k vocabulary),
from the bytes per logit measured here with the head frozen.

    python benchmarks/loss.py            # about 5 minutes on 2 cores
    python benchmarks/loss.py --quick    # one repeat each
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import statistics
import time

import torch
from common import arg_parser, bench_workdir, progress, table_header, write_results_page

from framework.config.schema import TrainConfig
from framework.data.pack import IGNORE_INDEX
from framework.loss.token import chunked_cross_entropy, token_losses

WIDTH, VOCAB = 576, 49_152  # SmolLM2-135M
TRAINED = 0.119  # the suite's share of trained positions
# (precision, rows, row length, head): the default run's micro batch, then a long one; the
# head trained (full fine-tuning) or frozen (adapters).
CASES = [
    ("fp32", 4, 512, "trained"),
    ("bf16", 4, 512, "trained"),
    ("bf16", 4, 512, "frozen"),
    ("bf16", 2, 4096, "trained"),
]
CHUNKS = sorted({128, 256, TrainConfig().loss.chunk_tokens, 1024})
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _inputs(dtype: torch.dtype, rows: int, row_len: int, head_trained: bool):
    generator = torch.Generator().manual_seed(0)
    # Made in their dtype: a conversion's transient copy would raise the peak measured
    # before the loss.
    hidden = torch.randn(rows, row_len, WIDTH, generator=generator, dtype=dtype)
    hidden.requires_grad_(True)
    head = torch.nn.Linear(WIDTH, VOCAB, bias=False, dtype=dtype).requires_grad_(head_trained)
    labels = torch.randint(VOCAB, (rows, row_len), generator=generator)
    untrained = torch.rand(rows, row_len, generator=generator) > TRAINED
    labels[untrained] = IGNORE_INDEX
    # Backward accumulates into these, as into the buffers an engine holds.
    hidden.grad = torch.zeros_like(hidden)
    if head_trained:
        head.weight.grad = torch.zeros_like(head.weight)
    return hidden, head, labels


def _loss(hidden, head, labels, chunk: int | None) -> torch.Tensor:
    """The summed loss as framework.loss.token computes it (chunk None: every position)."""
    if chunk is None:
        return token_losses(head(hidden), labels).sum()
    targets = labels[:, 1:]
    trained = targets != IGNORE_INDEX
    return chunked_cross_entropy(
        hidden[:, :-1][trained], targets[trained], head, chunk_tokens=chunk
    ).sum()


def _measure(case: tuple, chunk: int | None, repeats: int, queue) -> None:
    dtype_name, rows, row_len, head = case
    hidden, head, labels = _inputs(DTYPES[dtype_name], rows, row_len, head == "trained")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        began = time.perf_counter()
        _loss(hidden, head, labels, chunk).backward()
        times.append(time.perf_counter() - began)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put({"seconds": statistics.median(times[1:]), "memory_mb": (peak - before) / 1024})


def measure(case: tuple, chunk: int | None, repeats: int) -> dict[str, float]:
    # A fixed mmap threshold: glibc then maps every tensor above 64 KiB on its own and
    # unmaps it when freed, so resident memory follows the live tensors (its default
    # threshold grows to 32 MiB and keeps freed tensors below it in the heap).
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(64 * 1024)
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_measure, args=(case, chunk, repeats, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def projection_lines(bytes_per_logit: float) -> list[str]:
    """The loss's memory per GPU at cluster scale: `bytes_per_logit` (measured on the bf16
    full-logit path with the head frozen: the bf16 logits, their fp32 copy for the
    cross-entropy, the fp32 log-softmax kept for backward and the gradient of the
    logits) times the logits each path holds at once, every position's for the
    full-logit path, one chunk's for ours; the head's gradient comes on top of both."""
    vocab, chunk = 128_256, TrainConfig().loss.chunk_tokens
    lines = table_header(
        "tokens per micro batch", "full-logit path", "trained positions, chunked", "ratio"
    )
    for tokens in (8192, 32_768):
        full = tokens * vocab * bytes_per_logit
        ours = min(chunk, round(tokens * TRAINED)) * vocab * bytes_per_logit
        lines.append(
            f"| {tokens:,} | {full / 2**30:.1f} GiB | {ours / 2**20:,.0f} MiB | "
            f"1/{full / ours:,.0f} |"
        )
    return lines


def main() -> None:
    args = arg_parser(__doc__, "loss", "one repeat per variant").parse_args()
    repeats = 1 if args.quick else 5
    with bench_workdir("bench-loss-"):
        lines = table_header(
            "micro batch",
            "head",
            "path",
            "loss memory",
            "vs full-logit",
            "fwd+bwd time",
            "speed-up",
        )
        bytes_per_logit = 0.0
        for case in CASES:
            dtype_name, rows, row_len, head = case
            progress(f"{case}: full-logit")
            full = measure(case, None, repeats)
            if (dtype_name, head) == ("bf16", "frozen"):
                bytes_per_logit = full["memory_mb"] * 2**20 / (rows * (row_len - 1) * VOCAB)
            results = [("full-logit (loss.positions=all)", full)]
            for chunk in CHUNKS:
                progress(f"{case}: chunk {chunk}")
                results.append((f"trained, chunk {chunk}", measure(case, chunk, repeats)))
            for name, r in results:
                lines.append(
                    f"| {rows} x {row_len}, {dtype_name} | {head} | {name} "
                    f"| {r['memory_mb']:,.0f} MB | {r['memory_mb'] / full['memory_mb']:.3f} "
                    f"| {r['seconds'] * 1e3:,.0f} ms "
                    f"| {full['seconds'] / r['seconds']:.2f}x |"
                )
    conditions = (
        f"Head {WIDTH} x {VOCAB:,}; {TRAINED:.1%} of positions trained; medians of "
        f"{repeats} repeats after a warm-up; {torch.get_num_threads()} threads. "
        f"Measured: {bytes_per_logit:.1f} bytes per logit on the bf16 full-logit path."
    )
    body = [conditions, "", "## Memory and time of the loss, per micro batch", "", *lines]
    body += ["", "## Projection: Llama-3 8B (128,256-token vocabulary, bf16 logits), per GPU"]
    write_results_page(args.out, "The loss alone", [*body, "", *projection_lines(bytes_per_logit)])


if __name__ == "__main__":
    main()
