"""The loss math of `train.step.train_step` under DeepSpeed, whatever the layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from framework.config.schema import AdapterConfig, TrainConfig
from framework.data.dataset import TokenizedDataset
from framework.data.pack import IGNORE_INDEX, best_fit_decreasing, collate_rows
from framework.hf.engine_export import gather_state_dict
from framework.loss.token import TokenCrossEntropy, summed_loss, token_losses
from framework.model.adapters import prepare_for_training
from framework.model.build import TORCH_DTYPES, build_model
from framework.model.sequence_parallel import SEQUENCE_PARALLEL, SequenceParallel, split_attention
from framework.train.engine import build_engine, deepspeed_config
from framework.train.step import (
    train_step,
)
from tests.helpers import (
    TINY,
    assert_same,
    cpu_loss,
    join_group,
    leave_group,
    spawn,
    synthetic_data,
    weight_gaps,
)

ROWS_PER_STEP, STEPS, ROW_LEN = 8, 2, 96
SFT = TokenCrossEntropy(cpu_loss())
# The full-logit path, and the trained-positions one in chunks of 5 positions: ranks and
# micro batches then run different numbers of chunks.
FULL_LOGITS = TokenCrossEntropy(cpu_loss(positions="all"))
SMALL_CHUNKS = TokenCrossEntropy(cpu_loss(chunk_tokens=5))
FULL = AdapterConfig()
# Without dropout: its random draws follow the layout's micro batch shapes.
LORA = AdapterConfig(method="lora", dropout=0.0)


def global_rows(data: TokenizedDataset) -> list[np.ndarray]:
    plan = best_fit_decreasing(data.lengths(), ROW_LEN, seed=0)
    assert len(plan) >= ROWS_PER_STEP * STEPS
    return [plan.row(i) for i in range(ROWS_PER_STEP * STEPS)]


def rank_micro_batches(data, rows, *, rank, world, accum, mbs, per_example=False, masked=-1):
    """This rank's micro batches: step s, accumulation a takes the global rows
    (a * world + rank) * mbs ... + mbs of that step, so every layout sees the same rows.
    Rank `masked` gets its rows with nothing trained."""
    batches = []
    for step in range(STEPS):
        step_rows = rows[step * ROWS_PER_STEP : (step + 1) * ROWS_PER_STEP]
        for a in range(accum):
            first = (a * world + rank) * mbs
            chunk = step_rows[first : first + mbs]
            batch = collate_rows(
                data.tokens, data.weights, data.offsets, chunk, ROW_LEN, 0, per_example
            )
            if rank == masked:
                batch["loss_weights"] = torch.zeros_like(batch["loss_weights"])
                batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
            batches.append(batch)
    return batches


def _run_layout(
    rank,
    world,
    port,
    accum,
    mbs,
    tok_dir,
    out_file,
    zero_stage,
    per_example,
    masked,
    objective,
    precision,
    adapter,
    sequence_parallel,
):
    join_group(rank, world, port)
    cfg = TrainConfig(model=TINY)
    cfg.trainer.micro_batch_size, cfg.trainer.grad_accum_steps = mbs, accum
    cfg.trainer.lr, cfg.trainer.warmup_steps, cfg.trainer.max_steps = 1e-2, 0, 100
    cfg.parallelism.zero_stage = zero_stage
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, TORCH_DTYPES[precision])
    model = prepare_for_training(model, TINY, adapter)
    ds_config = deepspeed_config(cfg, world_size=world, precision=precision, gpu=False)
    engine = build_engine(model, cfg, ds_config=ds_config, device=torch.device("cpu"))
    if sequence_parallel > 1:  # as build_training_engine does; a group's ranks share rows
        split_attention(model.config._attn_implementation)
        setattr(engine, SEQUENCE_PARALLEL, SequenceParallel.join(sequence_parallel, 60))
    data = synthetic_data(len(tokenizer))
    batches = iter(
        rank_micro_batches(
            data,
            global_rows(data),
            rank=rank // sequence_parallel,
            world=world // sequence_parallel,
            accum=accum,
            mbs=mbs,
            per_example=per_example,
            masked=masked,
        )
    )
    cpu = torch.device("cpu")
    steps = [train_step(engine, batches, accum, cpu, objective=objective) for _ in range(STEPS)]
    state = gather_state_dict(engine.module, zero_stage)
    if rank == 0:
        losses, grad_norms = [s["loss"] for s in steps], [s["grad_norm"] for s in steps]
        torch.save({"losses": losses, "grad_norms": grad_norms, "state": state}, out_file)
    leave_group()


def run_layout(
    tmp_path,
    tokenizer,
    world,
    accum,
    mbs,
    zero_stage=2,
    per_example=False,
    masked=-1,
    objective=SFT,
    precision="fp32",
    adapter=FULL,
    sequence_parallel=1,
):
    tok_dir = tmp_path / "tokenizer"
    if not tok_dir.exists():
        tokenizer.save_pretrained(tok_dir)
    positions, chunk = objective.cfg.positions, objective.cfg.chunk_tokens
    name = f"{type(objective).__name__}-{positions}-{chunk}"
    out = (
        tmp_path / f"{world}x{accum}x{mbs}-z{zero_stage}-{per_example}-{masked}-{name}-{precision}-"
        f"{adapter.method}-sp{sequence_parallel}.pt"
    )
    args = (str(tok_dir), str(out), zero_stage, per_example, masked, objective, precision, adapter)
    args += (sequence_parallel,)
    spawn(_run_layout, world, accum, mbs, *args)
    return torch.load(out, weights_only=True)


class PerRankWeight(TokenCrossEntropy):
    """A wrong normalisation, for the layout test to catch: each rank divides by its own
    trained weight instead of the global one."""

    def global_weight(self, micro_batches):
        return float(torch.stack([b["loss_weights"][:, 1:].sum() for b in micro_batches]).sum())


# Weights of two layouts after two steps, relative gap in norm. Summation order differs
# with the layout and the CPU's kernels, and Adam turns that noise in near-zero gradients
# into weight noise: measured 7.4e-6 on an AMD EPYC (AVX-512), 1.72e-5 on an Intel Xeon
# (AVX-512 + AMX). A wrong normalisation moves them far more: per-rank instead of global
# weights (PerRankWeight) by 0.038, per-example instead of per-token by 0.6.
LAYOUT_WEIGHT_RTOL = 1e-4
# Rows split across 2 ranks (sequence parallelism) sum each gradient in yet another order:
# measured 1.84e-4 under ZeRO-2 (EPYC), all of it one element of 8,192 in layer 0's
# up_proj moving 4.2e-4 (a near-zero gradient, which Adam moves by about the rate either
# way), while the losses and the gradient norms agree to 1e-7.
SPLIT_WEIGHT_RTOL = 1e-3
BF16_LAYOUT_RTOL = 1e-3


def assert_same_layout(reference: dict, layout: dict, split: int) -> None:
    """Two steps of another layout (`split`: ranks sharing each row) as the reference's."""
    np.testing.assert_allclose(layout["grad_norms"], reference["grad_norms"], rtol=1e-5)
    assert_same(reference, layout, SPLIT_WEIGHT_RTOL if split > 1 else LAYOUT_WEIGHT_RTOL)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_two_steps_are_identical_whatever_the_layout(tmp_path, tokenizer, zero_stage):
    reference = run_layout(tmp_path, tokenizer, world=1, accum=4, mbs=2, zero_stage=zero_stage)
    for world, accum, mbs, split in [(2, 2, 2, 1), (2, 1, 4, 1), (2, 4, 2, 2)]:
        layout = run_layout(
            tmp_path, tokenizer, world, accum, mbs, zero_stage, sequence_parallel=split
        )
        assert_same_layout(reference, layout, split)
    # The bound still catches a wrong normalisation, by a wide margin.
    wrong = run_layout(
        tmp_path, tokenizer, 2, 2, 2, zero_stage, objective=PerRankWeight(cpu_loss())
    )
    gaps = weight_gaps(reference["state"], wrong["state"])
    assert max(gaps.values()) > 10 * LAYOUT_WEIGHT_RTOL, max(gaps.values())
    torch.manual_seed(0)
    initial = build_model(TINY, tokenizer, torch.float32).state_dict()
    moved = max((w - initial[n]).abs().max().item() for n, w in reference["state"].items())
    assert moved > 1e-3  # two real optimizer steps were taken


@pytest.mark.slow
def test_lora_steps_are_identical_whatever_the_layout(tmp_path, tokenizer):
    reference = run_layout(tmp_path, tokenizer, world=1, accum=4, mbs=2, adapter=LORA)
    for world, accum, mbs, split in [(2, 2, 2, 1), (2, 1, 4, 1), (2, 4, 2, 2)]:
        layout = run_layout(
            tmp_path, tokenizer, world, accum, mbs, adapter=LORA, sequence_parallel=split
        )
        assert_same_layout(reference, layout, split)
    torch.manual_seed(0)
    initial = build_model(TINY, tokenizer, torch.float32).state_dict()
    for name, weight in reference["state"].items():
        if "lora_B" in name:
            assert weight.abs().max() > 0, name  # B starts at zero: the adapters trained
        elif "lora_" not in name:
            plain = name.removeprefix("base_model.model.").replace(".base_layer", "")
            assert torch.equal(weight, initial[plain]), name  # the base stayed frozen


@pytest.mark.slow
def test_bf16_steps_are_the_same_whatever_the_layout_within_bf16_rounding(tmp_path, tokenizer):
    """bf16 forwards round differently with the micro batch shape, so layouts agree
    within BF16_LAYOUT_RTOL, not to fp32's 1e-5. Compared: each step's loss and gradient
    norm (fp32, accumulated over micro batches and ranks). Not the weights: Adam turns
    bf16 noise in near-zero gradients into weight noise (2.8% in norm at this lr, as much
    as a wrong normalisation moves them in fp32)."""
    reference = run_layout(tmp_path, tokenizer, world=1, accum=4, mbs=2, precision="bf16")
    for world, accum, mbs in [(2, 2, 2), (2, 1, 4)]:
        layout = run_layout(tmp_path, tokenizer, world, accum, mbs, precision="bf16")
        for key in ("losses", "grad_norms"):
            print(key, layout[key], reference[key])
            np.testing.assert_allclose(layout[key], reference[key], rtol=BF16_LAYOUT_RTOL)
    wrong = run_layout(
        tmp_path, tokenizer, 2, 2, 2, objective=PerRankWeight(cpu_loss()), precision="bf16"
    )
    print("wrong", wrong["grad_norms"], reference["grad_norms"])
    gap = abs(wrong["grad_norms"][0] / reference["grad_norms"][0] - 1)
    assert gap > 10 * BF16_LAYOUT_RTOL, gap


@pytest.mark.slow
def test_per_example_average_is_layout_invariant_and_differs_from_token_average(
    tmp_path, tokenizer
):
    by_token = run_layout(tmp_path, tokenizer, world=1, accum=4, mbs=2)
    by_example = run_layout(tmp_path, tokenizer, world=1, accum=4, mbs=2, per_example=True)
    # Per-token weights of 1/length carry more rounding: 3.3e-5 was measured across these
    # layouts (losses within 3e-8), against 0.6 between per-example and per-token averages.
    other_layout = run_layout(tmp_path, tokenizer, 2, 1, 4, per_example=True)
    assert_same(by_example, other_layout, weight_rtol=1e-4)
    assert abs(by_example["losses"][0] - by_token["losses"][0]) > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [2, 3])
def test_trained_positions_loss_steps_as_the_full_logit_path(tmp_path, tokenizer, zero_stage):
    """Two optimizer steps on 2 ranks: the chunked trained-positions loss (chunks of 5, so
    ranks run different numbers of chunks, which ZeRO-3 must even out) against the logits
    of every position. Under ZeRO-3 rank 1 also trains nothing: no hang, and the same
    losses as the full-logit path, which are rank 0's alone (masking moved them)."""
    common = {"world": 2, "accum": 1, "mbs": 4, "zero_stage": zero_stage}
    full = run_layout(tmp_path, tokenizer, **common, objective=FULL_LOGITS)
    chunked = run_layout(tmp_path, tokenizer, **common, objective=SMALL_CHUNKS)
    for key in ("losses", "grad_norms"):
        np.testing.assert_allclose(chunked[key], full[key], rtol=1e-6)
    assert_same(full, chunked, weight_rtol=LAYOUT_WEIGHT_RTOL)
    if zero_stage == 3:
        masked_full = run_layout(tmp_path, tokenizer, **common, masked=1, objective=FULL_LOGITS)
        masked = run_layout(tmp_path, tokenizer, **common, masked=1, objective=SMALL_CHUNKS)
        np.testing.assert_allclose(masked["losses"], masked_full["losses"], rtol=1e-6)
        assert all(torch.isfinite(w).all() for w in masked["state"].values())
        assert abs(masked["losses"][0] - full["losses"][0]) > 1e-3


def _loss_and_grads(model, batch):
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    loss, weight = summed_loss(token_losses(logits, batch["labels"]), batch["loss_weights"])
    (loss / weight).backward()
    return loss.item() / weight.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_packed_and_padded_batches_give_the_same_loss_and_gradients(tokenizer):
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, torch.float32)
    data = synthetic_data(len(tokenizer))
    rows = global_rows(data)[:4]
    packed = collate_rows(data.tokens, data.weights, data.offsets, rows, ROW_LEN, 0)
    alone = [np.array([i]) for row in rows for i in row]
    padded = collate_rows(data.tokens, data.weights, data.offsets, alone, None, 0)
    packed_loss, packed_grads = _loss_and_grads(model, packed)
    padded_loss, padded_grads = _loss_and_grads(model, padded)
    assert packed_loss == pytest.approx(padded_loss, rel=1e-5)
    for name, grad in packed_grads.items():
        torch.testing.assert_close(grad, padded_grads[name], rtol=1e-4, atol=1e-6)
