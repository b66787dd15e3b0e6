"""The packing self-check passes correct packing and stops leaks, in fp32 and bf16, on
several micro batch shapes, also when rounding moves losses more than a fixed bound
would allow (framework/train/selfcheck.py)."""

import numpy as np
import pytest
import torch

from framework.data.dataset import TokenizedDataset
from framework.data.formats import Conversation
from framework.data.pack import best_fit_decreasing, collate_rows
from framework.data.render import render
from framework.loss.token import token_losses
from framework.train.selfcheck import PackingCheckFailed, verify_packing
from tests.helpers import single_process_group, suite_chats, synthetic_data

# (rows, row length) of the micro batches checked on the real model.
SHAPES = [(1, 256), (4, 128)]


def _forward(model, leak: str | None = None, noise: float = 0.0):
    """The model's packed token losses; `leak` makes examples see each other ("running":
    positions never restart; "dense": one causal mask over the row); `noise` adds a
    rounding stand-in that depends on the batch shape, as bf16 rounding does on CPUs
    whose kernels change with it."""

    def forward(ids, positions, labels):
        mask = None
        if leak == "running":
            positions = torch.arange(ids.shape[1])[None].expand_as(ids)
        if leak == "dense":
            mask = torch.ones(ids.shape[1], ids.shape[1], dtype=torch.bool).tril()
            mask = mask[None, None].expand(ids.shape[0], 1, -1, -1)
        logits = model(
            input_ids=ids, position_ids=positions, attention_mask=mask, use_cache=False
        ).logits
        if noise:
            rng = torch.Generator().manual_seed(ids.shape[0] * 100_003 + ids.shape[1])
            jitter = torch.randn(logits.shape, generator=rng, dtype=torch.float32)
            logits = logits + noise * jitter.to(logits.dtype)
        return token_losses(logits, labels)

    return forward


def _batch(data, rows: int, row_len: int):
    plan = best_fit_decreasing(data.lengths(), row_len, seed=0)
    assert len(plan) >= rows
    return collate_rows(
        data.tokens, data.weights, data.offsets, [plan.row(i) for i in range(rows)], row_len, 0
    )


@pytest.fixture(scope="module")
def tiny_batch(tiny_model, tokenizer):
    data = synthetic_data(len(tokenizer))
    rows = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    return collate_rows(data.tokens, data.weights, data.offsets, rows, 128, 0)


def test_correct_packing_passes(tiny_model, tiny_batch):
    check = verify_packing(_forward(tiny_model), tiny_batch, dtype=torch.float32)
    assert check.neighbours == 0 and check.alone < 0.1
    assert check.neighbour_examples == 4  # every example with one before it was compared


@pytest.mark.parametrize("leak", ["running", "dense"])
def test_examples_that_see_each_other_stop_the_run(tiny_model, tiny_batch, leak):
    with pytest.raises(PackingCheckFailed, match=r"see each other.*trainer\.verify_packing=false"):
        verify_packing(_forward(tiny_model, leak), tiny_batch, dtype=torch.float32)


def test_losses_that_differ_alone_beyond_the_precision_stop_the_run(tiny_model, tiny_batch):
    with pytest.raises(PackingCheckFailed, match="running alone"):
        verify_packing(_forward(tiny_model, noise=0.5), tiny_batch, dtype=torch.float32)


# ------------------------------------------------------------ the real model (marked slow)


def _copy_chats(tokenizer, chats: TokenizedDataset) -> TokenizedDataset:
    """Rows of [a suite chat, a chat whose answer repeats its prompt]: the second has a
    low loss (0.25-0.5 nats a token on SmolLM2) and something before it to leak."""
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "Paris is the capital of France.",
        "Water boils at one hundred degrees Celsius.",
        "Seven plus five equals twelve.",
    ]
    copies = [
        render(
            tokenizer,
            Conversation(
                [
                    {"role": "user", "content": f"Repeat exactly: {s}"},
                    {"role": "assistant", "content": s},
                ]
            ),
            "assistant",
            f"copy[{i}]",
        )
        for i, s in enumerate(sentences)
    ]
    firsts = [chats.example(i) for i in range(len(copies))]
    return TokenizedDataset.from_examples(firsts + [(c.input_ids, c.weights) for c in copies])


@pytest.fixture(scope="module")
def real_chats(real_tokenizer):
    return suite_chats(real_tokenizer, 30)


@pytest.mark.slow
def test_fp32_on_the_real_slice_passes_packing_and_stops_leaks(real_slice, real_chats):
    single_process_group()
    batch = _batch(real_chats, *SHAPES[1])
    check = verify_packing(_forward(real_slice), batch, dtype=torch.float32)
    assert check.neighbours < 1 and check.alone < 1
    for leak in ("running", "dense"):
        with pytest.raises(PackingCheckFailed, match="see each other"):
            verify_packing(_forward(real_slice, leak), batch, dtype=torch.float32)


@pytest.mark.slow
@pytest.mark.parametrize(("shape", "rounding"), [(SHAPES[0], 0.0), (SHAPES[1], 0.1)])
def test_bf16_on_the_real_slice_passes_packing_and_stops_leaks(
    real_slice_bf16, real_chats, shape, rounding
):
    """`rounding` 0.1 moves packed-vs-alone losses by up to 3% (as much as bf16 does on
    an Intel Xeon with AMX, more than this CPU does), which a fixed 2% bound failed. The
    2-layer slice in bf16: real bf16 rounding on the real vocabulary and template, at a
    fifteenth of the whole model's cost (95-194 s a test here, where bf16 is emulated)."""
    single_process_group()
    batch = _batch(real_chats, *shape)
    check = verify_packing(_forward(real_slice_bf16, noise=rounding), batch, dtype=torch.bfloat16)
    assert check.neighbours < 1 and check.alone < 1
    for leak in ("running", "dense"):
        with pytest.raises(PackingCheckFailed, match="see each other"):
            verify_packing(_forward(real_slice_bf16, leak, rounding), batch, dtype=torch.bfloat16)


@pytest.mark.slow
def test_bf16_bounds_catch_leaks_into_low_loss_examples(real_model, real_tokenizer, real_chats):
    """Leaks into examples the model predicts well move their losses least: the whole
    model (the slice copies nothing), whose copies cost it under 0.6 nats a token, judged
    with bf16's bounds and the rounding stand-in. Its forwards run in fp32: this CPU
    emulates bf16 at 7-15x the cost, and the neighbour comparison runs the same shapes,
    whose rounding is the same either way (the bf16 rounding is the tests above')."""
    single_process_group()
    data = _copy_chats(real_tokenizer, real_chats)
    copies = collate_rows(
        data.tokens, data.weights, data.offsets, [np.array([i]) for i in range(4, 8)], None, 0
    )
    with torch.no_grad():
        logits = real_model(
            input_ids=copies["input_ids"], position_ids=copies["position_ids"]
        ).logits
    losses = token_losses(logits, copies["labels"]).sum(1) / (copies["labels"] != -100).sum(1)
    assert losses.max() < 0.6, losses  # what may leak into them moves them little
    rows = [np.array([i, 4 + i]) for i in range(4)]
    batch = collate_rows(data.tokens, data.weights, data.offsets, rows, 128, 0)
    assert verify_packing(_forward(real_model, noise=0.1), batch, dtype=torch.bfloat16)
    # Positions that run on: the subtler leak (a dense mask moves them by 200-700%).
    with pytest.raises(PackingCheckFailed, match="see each other"):
        verify_packing(_forward(real_model, "running", 0.1), batch, dtype=torch.bfloat16)
