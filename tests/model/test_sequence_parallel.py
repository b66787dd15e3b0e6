"""Sequence parallelism against the same rows through one whole model: N spawned gloo
ranks share packed rows whose documents cross the slice boundaries and whose length is no
multiple of N; every rank's losses are those of the whole rows, and the gradients summed
over the ranks are N times the whole model's (framework/model/sequence_parallel.py: the
global weight counts each row N times)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.distributed as dist

from framework.config.schema import ConfigError, ModelConfig
from framework.data.pack import IGNORE_INDEX
from framework.loss.token import token_loss_fn
from framework.model.build import build_model
from framework.model.sequence_parallel import (
    SEQUENCE_PARALLEL,
    SequenceParallel,
    check_splittable,
    split_attention,
)
from framework.run.checkpoints import step_dir
from framework.run.files import METRICS_FILE
from framework.train.engine import join_deepspeed_comm
from tests.helpers import (
    TINY,
    ZERO3_RUN,
    cpu_loss,
    join_group,
    leave_group,
    losses,
    run,
    spawn,
    weight_gaps,
    weights,
)

# 6 query heads and 3 key-value heads: split in 3 as well as TINY's 4 and 2 are in 2.
SIX_HEADS = ModelConfig(
    hidden_size=48, intermediate_size=96, num_layers=2, num_heads=6, num_kv_heads=3
)
# One key-value head for 4 query heads: split in 2, DeepSpeed replicates it.
ONE_KV_HEAD = ModelConfig(
    hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=1
)
# Two rows of 37 positions: documents of 10, 15 and 12 tokens, and of 20 and 17.
DOCUMENTS = [[10, 15, 12], [20, 17]]


def _packed_rows(vocab: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in DOCUMENTS])
    ids = torch.randint(0, vocab, positions.shape, generator=generator)
    labels = ids.clone()
    labels[positions < 4] = IGNORE_INDEX  # each document's first tokens: its prompt
    weights = (labels != IGNORE_INDEX).float()
    return {"input_ids": ids, "position_ids": positions, "labels": labels, "loss_weights": weights}


def _losses_and_gradients(model, batch, positions: str):
    found = token_loss_fn(model, cpu_loss(positions=positions))(
        batch["input_ids"], batch["position_ids"], batch["labels"]
    )
    (found * batch["loss_weights"][:, 1:]).sum().backward()
    return found.detach(), {n: p.grad for n, p in model.named_parameters()}


def _model(cfg: ModelConfig, tokenizer):
    torch.manual_seed(0)
    return build_model(cfg, tokenizer, torch.float32)


def _split_rank(rank, world, port, cfg, tokenizer, positions, out):
    join_group(rank, world, port)
    join_deepspeed_comm(60)
    model = _model(cfg, tokenizer)
    setattr(model, SEQUENCE_PARALLEL, SequenceParallel.join(world, 60))
    split_attention(model.config._attn_implementation)
    found, gradients = _losses_and_gradients(model, _packed_rows(len(tokenizer)), positions)
    for gradient in gradients.values():
        dist.all_reduce(gradient)
    gathered = [torch.empty_like(found) for _ in range(world)]
    dist.all_gather(gathered, found)
    groups = [layer.self_attn.num_key_value_groups for layer in model.model.layers]
    if rank == 0:
        torch.save({"losses": gathered, "gradients": gradients, "groups": groups}, out)
    leave_group()


@pytest.mark.parametrize(
    "cfg, world, positions",
    [
        (TINY, 2, "trained"),
        (TINY, 2, "all"),
        (SIX_HEADS, 3, "trained"),
        (ONE_KV_HEAD, 2, "trained"),
    ],
    ids=["2-trained", "2-all", "3-trained", "2-one-key-value-head"],
)
def test_split_rows_give_the_whole_rows_losses_and_gradients(
    cfg, world, positions, tokenizer, tmp_path
):
    spawn(_split_rank, world, cfg, tokenizer, positions, tmp_path / "split.pt")
    split = torch.load(tmp_path / "split.pt", weights_only=True)
    whole, gradients = _losses_and_gradients(
        _model(cfg, tokenizer), _packed_rows(len(tokenizer)), positions
    )

    assert (whole > 0).sum() > 40  # trained positions on both sides of every boundary
    for on_rank in split["losses"]:
        torch.testing.assert_close(on_rank, whole, rtol=1e-5, atol=1e-6)
    # What unsplit forwards (generation) read of the heads is left as it was.
    assert split["groups"] == [cfg.num_heads // cfg.num_kv_heads] * cfg.num_layers
    for name, gradient in gradients.items():
        torch.testing.assert_close(split["gradients"][name] / world, gradient, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_a_zero3_run_resumed_with_its_rows_split_ends_as_the_straight_run(zero3_run, tmp_path):
    """The session's ZeRO-3 run (2 ranks, 2 rows each) resumed at step 2 by 2 ranks that
    share 4 rows a micro step (sequence_parallel=2: the same global batch): the packing
    self-check passes on split rows, steps 3 and 4 and the final eval loss (split too) are
    the straight run's, and so are the exported weights and the suite's answers (generated
    without the split)."""
    checkpoints, out = zero3_run / "run" / "checkpoints", tmp_path / "split"
    split = ["parallelism.sequence_parallel=2", "trainer.micro_batch_size=4"]
    resume = f"checkpoint.resume={step_dir(checkpoints, 2)}"
    run(out, zero3_run / "cache", *ZERO3_RUN, *split, resume)

    got, want = losses(out), losses(zero3_run / "run")
    assert list(got) == [3, 4]
    np.testing.assert_allclose([got[3], got[4]], [want[3], want[4]], rtol=1e-5)
    assert _eval_loss(out) == pytest.approx(_eval_loss(zero3_run / "run"), rel=1e-5)
    answers = [(run / "suite_answers.jsonl").read_text() for run in (out, zero3_run / "run")]
    assert answers[0] == answers[1]
    # Each tensor within 1e-5 in norm (helpers.assert_same: the split sums in another order).
    for name, gap in weight_gaps(weights(out), weights(zero3_run / "run")).items():
        assert gap < 1e-5, f"{name}: relative difference {gap:.2e}"


@pytest.mark.parametrize(
    "implementation, size, message",
    [
        ("flex_attention", 2, "cannot split flex_attention attention"),
        ("sdpa", 2, "cannot split sdpa attention"),
        ("document_sdpa", 3, "cannot split the model's 4 attention heads (2 key-value heads)"),
        ("document_sdpa", 8, "cannot split the model's 4 attention heads"),
    ],
)
def test_what_cannot_be_split_is_one_line_naming_the_key(tiny_model, implementation, size, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        check_splittable(tiny_model.config, implementation, size)
    assert f"parallelism.sequence_parallel={size}" in str(error.value)
    check_splittable(tiny_model.config, "document_sdpa", 2)  # 4 / 2 heads, 2 / 2 key-value


def _eval_loss(out) -> float:
    """The last eval loss a run logged (the end's: split over the groups under the split)."""
    logged = [json.loads(line) for line in (out / METRICS_FILE).read_text().splitlines()]
    return [m["eval_loss"] for m in logged if "eval_loss" in m][-1]
