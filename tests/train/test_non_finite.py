"""Steps whose update must not happen: a NaN or infinite loss, or gradient norm, under
every ZeRO stage, in fp32 and bf16, with trainer.on_non_finite's two policies."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from framework.commands.prepare import prepare_run
from framework.config.schema import TrainConfig
from framework.data.pack import best_fit_decreasing, collate_rows
from framework.hf.engine_export import gather_state_dict
from framework.loss.token import TokenCrossEntropy
from framework.model.build import TORCH_DTYPES, build_model
from framework.run.checkpoints import committed
from framework.train.engine import build_engine, deepspeed_config
from framework.train.step import (
    GRADIENT_SKIP,
    LOSS_SKIP,
    NonFiniteLoss,
    guarded_step,
    train_step,
)
from tests.helpers import (
    RUN,
    TINY,
    compose_config,
    cpu_loss,
    single_process_group,
    spawn,
    synthetic_data,
    train_rank,
)

ROW_LEN = 96
SFT = TokenCrossEntropy(cpu_loss())


def _one_rank_engine(tokenizer, zero_stage: int, accum: int = 1, precision: str = "fp32"):
    single_process_group()
    cfg = TrainConfig(model=TINY)
    cfg.trainer.micro_batch_size, cfg.trainer.grad_accum_steps = 2, accum
    cfg.trainer.warmup_steps, cfg.parallelism.zero_stage = 0, zero_stage
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, TORCH_DTYPES[precision])
    ds_config = deepspeed_config(cfg, world_size=1, precision=precision, gpu=False)
    return build_engine(model, cfg, ds_config=ds_config, device=torch.device("cpu"))


def _micro_batches(tokenizer, count: int, poisoned: int | None = None) -> list[dict]:
    """`count` micro batches of 2 packed rows; `poisoned`'s loss is NaN."""
    data = synthetic_data(len(tokenizer))
    plan = best_fit_decreasing(data.lengths(), ROW_LEN, seed=0)
    rows = [[plan.row(2 * i), plan.row(2 * i + 1)] for i in range(count)]
    batches = [collate_rows(data.tokens, data.weights, data.offsets, r, ROW_LEN, 0) for r in rows]
    if poisoned is not None:
        batches[poisoned]["loss_weights"][0, 5] = float("nan")
    return batches[:count]


def test_a_non_finite_loss_stops_before_the_weights_change(tokenizer):
    engine = _one_rank_engine(tokenizer, zero_stage=0)
    before = gather_state_dict(engine.module, 0)
    with pytest.raises(NonFiniteLoss):
        train_step(
            engine,
            iter(_micro_batches(tokenizer, 1, poisoned=0)),
            1,
            torch.device("cpu"),
            objective=SFT,
        )
    after = gather_state_dict(engine.module, 0)
    assert all(torch.equal(after[name], weight) for name, weight in before.items())


@pytest.mark.parametrize("zero_stage", [0, 2, 3])
def test_a_skipped_step_leaves_the_weights_and_the_next_step_trains(tokenizer, zero_stage):
    """Step 1 (second micro batch poisoned) is skipped; step 2 then equals the first step
    of a run that never saw step 1's data."""
    engine = _one_rank_engine(tokenizer, zero_stage, accum=2)
    cpu = torch.device("cpu")
    before = gather_state_dict(engine.module, zero_stage)
    batches = iter(_micro_batches(tokenizer, 4, poisoned=1))
    first = train_step(engine, batches, 2, cpu, skip_non_finite=True, objective=SFT)
    assert first["skipped"] == 1 and np.isnan(first["loss"])
    unchanged = gather_state_dict(engine.module, zero_stage)
    assert all(torch.equal(unchanged[name], weight) for name, weight in before.items())
    second = train_step(engine, batches, 2, cpu, skip_non_finite=True, objective=SFT)
    assert second["skipped"] == 0 and np.isfinite(second["loss"])
    trained = gather_state_dict(engine.module, zero_stage)

    reference = _one_rank_engine(tokenizer, zero_stage, accum=2)
    expected = train_step(reference, iter(_micro_batches(tokenizer, 4)[2:]), 2, cpu, objective=SFT)
    assert second["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    for name, weight in gather_state_dict(reference.module, zero_stage).items():
        torch.testing.assert_close(trained[name], weight, rtol=1e-5, atol=1e-7)


def test_skipping_stops_after_max_skipped_steps_in_a_row(tokenizer, capsys):
    engine = _one_rank_engine(tokenizer, zero_stage=2)
    cfg = TrainConfig(model=TINY)
    cfg.trainer.on_non_finite, cfg.trainer.max_skipped_steps = "skip", 1
    where = {"objective": SFT, "rank": 0, "device": torch.device("cpu"), "peak": None}
    poisoned = _micro_batches(tokenizer, 2, poisoned=0)
    poisoned[1]["loss_weights"][0, 5] = float("nan")
    batches = iter(poisoned)
    assert guarded_step(engine, batches, cfg, **where, step=1, in_a_row=0)["skipped"] == 1
    assert "step 1: the loss is NaN or infinite; step skipped" in capsys.readouterr().out
    with pytest.raises(NonFiniteLoss, match=r"step 2: .* after 1 skipped steps in a row"):
        guarded_step(engine, batches, cfg, **where, step=2, in_a_row=1)


class _InfiniteGradient(torch.autograd.Function):
    """Identity forward; backward sends an infinite gradient on: the loss stays finite."""

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize(
    ("zero_stage", "precision"), [(0, "fp32"), (2, "fp32"), (3, "fp32"), (2, "bf16")]
)
@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_non_finite_gradient_norm_under_a_finite_loss_is_counted_and_governed(
    tokenizer, capsys, zero_stage, precision, policy
):
    """Skipped by ZeRO 1-3 (by us under ZeRO-0), counted with its reason; stop raises naming
    the step, skip goes on and the next step trains. Weights and lr schedule hold."""
    engine = _one_rank_engine(tokenizer, zero_stage, precision=precision)
    cfg = TrainConfig(model=TINY)
    cfg.trainer.on_non_finite = policy
    where = {"objective": SFT, "rank": 0, "device": torch.device("cpu"), "peak": None}
    batches, lr = iter(_micro_batches(tokenizer, 2)), engine.get_lr()[0]
    before = gather_state_dict(engine.module, zero_stage)
    poison = engine.module.model.norm.register_forward_hook(
        lambda module, args, out: _InfiniteGradient.apply(out)
    )
    if policy == "stop":
        with pytest.raises(
            NonFiniteLoss, match=r"step 1: the gradient norm is NaN or infinite, so"
        ):
            guarded_step(engine, batches, cfg, **where, step=1, in_a_row=0)
    else:
        metrics = guarded_step(engine, batches, cfg, **where, step=1, in_a_row=0)
        counts = (metrics["skipped"], metrics[GRADIENT_SKIP], metrics[LOSS_SKIP])
        assert counts == (1, 1, 0) and np.isfinite(metrics["loss"])
        assert (
            "step 1: the gradient norm is NaN or infinite; step skipped" in capsys.readouterr().out
        )
    poison.remove()
    held = gather_state_dict(engine.module, zero_stage)
    assert all(torch.equal(held[name], weight) for name, weight in before.items())
    assert engine.get_lr()[0] == lr
    if policy == "skip":
        assert guarded_step(engine, batches, cfg, **where, step=2, in_a_row=1)["skipped"] == 0
        trained = gather_state_dict(engine.module, zero_stage)
        assert any(not torch.equal(trained[n], w) for n, w in before.items())
        assert engine.get_lr()[0] != lr


def test_zero0_reports_the_gradient_norm_that_zero2_measures(tokenizer):
    """DeepSpeed measures no norm for ZeRO-0's plain optimizer: ours must be the same."""
    cpu = torch.device("cpu")
    norms = [
        train_step(_one_rank_engine(tokenizer, zero), iter(_micro_batches(tokenizer, 1)), 1, cpu,
                   objective=SFT)["grad_norm"]
        for zero in (0, 2)
    ]  # fmt: skip
    assert norms[0] > 0 and norms[0] == pytest.approx(norms[1], rel=1e-5)


def _train_rank_diverging_at_step_2(rank, world, port, cfg, report: Path):
    """A training rank whose loss turns NaN at step 2 (after one optimizer step); the
    run's error goes to `report/rank<N>`."""
    finite = TokenCrossEntropy.summed_loss

    def nan_at_step_2(self, engine, batch):
        loss = finite(self, engine, batch)
        return loss * float("nan") if engine.global_steps == 1 else loss

    TokenCrossEntropy.summed_loss = nan_at_step_2
    train_rank(rank, world, port, cfg, report, NonFiniteLoss)


def test_a_diverged_run_stops_at_its_step_and_its_last_checkpoint_stays_the_result(tmp_path):
    """trainer.on_non_finite=stop through the whole loop on 2 ranks: both stop at step 2
    naming it, step 1's checkpoint stays, and no export pretends the run finished. (Through
    Ray such an error is one line on the console: tests/test_train_e2e.py's unwritable
    checkpoint takes the same path.)"""
    out = tmp_path / "run"
    cache = tmp_path / "cache"
    cfg = compose_config([*RUN, f"run.output_dir={out}", f"run.cache_dir={cache}"])
    cfg.checkpoint.every = 1
    spawn(_train_rank_diverging_at_step_2, 2, prepare_run(cfg).cfg, tmp_path)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}").read_text()
        assert re.match(r"step 2: the loss is NaN or infinite, so the run stops", message)
    assert [p.name for p in committed(out / "checkpoints")] == ["step_00000001"]
    assert not (out / "hf").exists()
