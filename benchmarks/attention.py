"""python benchmarks/attention.py [--quick]

Packed attention on this machine's CPU, side by side in one run: a random-init Llama of
SmolLM2-135M's width (hidden 576, 9 heads / 3 key-value heads, 8 of its 30 layers) in fp32,
one micro batch of 4 rows x 2,048 tokens packed with documents of 30-600 tokens. Each
implementation's forward (no gradient) and forward + backward, median of the repeats:

- `document_sdpa` as training calls it (`packed_logits`): the document bounds read from
  the position ids once per forward and handed to every layer;
- `document_sdpa` as it was: the bounds read from the position ids in every layer (on a
  GPU each read is a device-to-host sync; here it is the Python work alone);
- `sdpa`: transformers' SDPA with one dense block-diagonal mask over each row;
- `flex_attention`: transformers' FlexAttention with a document block mask, forward only
  (PyTorch has no FlexAttention backward on CPU), compiled before timing.

Nested-tensor SDPA is not a row: PyTorch has no SDPA kernel for nested tensors on CPU
("No viable backend"). The results page is benchmarks/results/attention.md.

    python benchmarks/attention.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from common import arg_parser, bench_workdir, progress, table_header, write_results_page

from framework.config.schema import ModelConfig
from framework.data.pack import collate_rows
from framework.model.attention import DOCUMENT_SDPA, FLEX_ATTENTION, packed_logits
from framework.model.build import build_model
from framework.model.tokenizer import train_bpe

ROWS, ROW_TOKENS = 4, 2048
SMOLLM2_WIDTH = ModelConfig(
    hidden_size=576, intermediate_size=1536, num_layers=8, num_heads=9, num_kv_heads=3
)


def packed_batch(vocab: int, row_tokens: int) -> dict[str, torch.Tensor]:
    """ROWS rows of `row_tokens` tokens, each filled with documents of 30-600 tokens."""
    rng = np.random.default_rng(0)
    lengths, rows = [], []
    for _ in range(ROWS):
        row, left = [], row_tokens
        while left > 30:
            lengths.append(min(left, int(rng.integers(30, 600))))
            row.append(len(lengths) - 1)
            left -= lengths[-1]
        rows.append(np.array(row))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    tokens = rng.integers(3, vocab, size=offsets[-1]).astype(np.int32)
    weights = np.ones(offsets[-1], dtype=np.float32)
    return collate_rows(tokens, weights, offsets, rows, row_tokens, 0)


def per_layer_bounds(model):
    """The forward as it was: position ids only, each layer reads the bounds itself."""
    return lambda ids, positions: model(input_ids=ids, position_ids=positions).logits


def timed(forward, batch, backward: bool) -> float:
    start = time.perf_counter()
    if backward:
        forward(batch["input_ids"], batch["position_ids"]).float().mean().backward()
    else:
        with torch.no_grad():
            forward(batch["input_ids"], batch["position_ids"])
    return time.perf_counter() - start


def main() -> None:
    args = arg_parser(
        __doc__, "attention", "2 repeats of rows of 512 tokens (a smoke run)"
    ).parse_args()
    repeats, row_tokens = (2, 512) if args.quick else (5, ROW_TOKENS)
    tokenizer = train_bpe([f"word{i} and more text {i * 7}" for i in range(2000)], 2048)
    batch = packed_batch(len(tokenizer), row_tokens)
    contenders = []
    for label, attention, make_forward in [
        ("document_sdpa, bounds once per forward", DOCUMENT_SDPA, packed_logits),
        ("document_sdpa, bounds in every layer (before)", DOCUMENT_SDPA, per_layer_bounds),
        ("sdpa (dense block mask)", "sdpa", packed_logits),
        ("flex_attention (forward only on CPU)", FLEX_ATTENTION, packed_logits),
    ]:
        torch.manual_seed(0)
        model = build_model(SMOLLM2_WIDTH, tokenizer, torch.float32, attention)
        contenders.append((label, make_forward(model), attention != FLEX_ATTENTION))
    # Round robin, the first round a warm-up (and FlexAttention's compilation): drift in
    # the machine's speed falls on every row alike.
    times = {label: ([], []) for label, _, _ in contenders}
    for round_ in range(repeats + 1):
        progress(f"round {round_} of {repeats}")
        for label, forward, trains in contenders:
            forward_s = timed(forward, batch, backward=False)
            train_s = timed(forward, batch, backward=True) if trains else None
            if round_:
                times[label][0].append(forward_s)
                times[label][1].append(train_s)
    rows = [
        (label, statistics.median(f), statistics.median(t) if t[0] is not None else None)
        for label, (f, t) in times.items()
    ]
    reference = rows[0]
    lines = [
        f"One micro batch of {ROWS} rows x {row_tokens} tokens, "
        f"{int((batch['position_ids'] == 0).sum())} documents; fp32, "
        f"{torch.get_num_threads()} threads; median of {repeats} rounds after a warm-up round.",
        "",
        *table_header(
            "attention", "forward s", "x first row", "forward + backward s", "x first row"
        ),
    ]
    for label, forward_s, train_s in rows:
        train = f"{train_s:.3f} | {train_s / reference[2]:.2f}" if train_s else "n/a | n/a"
        lines.append(f"| {label} | {forward_s:.3f} | {forward_s / reference[1]:.2f} | {train} |")
    write_results_page(args.out, "Packed attention on CPU", lines)


if __name__ == "__main__":
    with bench_workdir("attention-"):
        main()
