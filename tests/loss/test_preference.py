"""Preference losses (framework/loss/preference.py) against the published formulas written
out per pair on sequences run alone; the same steps whatever the layout; the step-0
reference check; the reference cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from framework.config.schema import ObjectiveConfig, TrainConfig
from framework.data.loader import RankBatches
from framework.hf.engine_export import gather_state_dict
from framework.loss.preference import PreferenceObjective, split_logps
from framework.loss.token import token_loss_fn
from framework.model.build import build_model
from framework.train.engine import build_engine, deepspeed_config
from framework.train.objective import build_objective
from framework.train.selfcheck import ReferenceCheckFailed, verify_reference
from framework.train.step import train_step
from tests.helpers import (
    TINY,
    alone,
    assert_same,
    cpu_loss,
    join_group,
    leave_group,
    pair_dataset,
    single_process_group,
    spawn,
)

PAIRS, ROW_LEN = 24, 256
# 30 rows of 256 tokens: two steps of 8 rows stay within the first epoch in every layout.
LAYOUT_PAIRS = 96
OBJECTIVES = {
    "dpo": ObjectiveConfig(name="dpo", beta=0.5, label_smoothing=0.1),
    "ipo": ObjectiveConfig(name="ipo", beta=0.5),
    "simpo": ObjectiveConfig(name="simpo", beta=2.0, simpo_gamma=0.5, label_smoothing=0.1),
    "orpo": ObjectiveConfig(name="orpo", orpo_lambda=0.3),
}


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def published(cfg: ObjectiveConfig, pc, pr, rc, rr, nc, nr) -> float:
    """One pair's loss as the papers write it (DPO eq. 7 with cDPO's smoothing, IPO eq. 17
    on mean-token log-ratios as TRL does, SimPO eq. 6, ORPO eq. 6-7), in plain floats."""
    eps, beta = cfg.label_smoothing, cfg.beta

    def smoothed(h):
        return -(1 - eps) * math.log(_sigmoid(h)) - eps * math.log(_sigmoid(-h))

    if cfg.name == "dpo":
        return smoothed(beta * ((pc - rc) - (pr - rr)))
    if cfg.name == "ipo":
        return ((pc - rc) / nc - (pr - rr) / nr - 1 / (2 * beta)) ** 2
    if cfg.name == "simpo":
        return smoothed(beta * (pc / nc - pr / nr) - cfg.simpo_gamma)

    def log_odds(m):
        return m - math.log(1 - math.exp(m))

    mc, mr = pc / nc, pr / nr
    return -mc - cfg.orpo_lambda * math.log(_sigmoid(log_odds(mc) - log_odds(mr)))


@pytest.fixture(scope="module")
def pairs(tokenizer, tiny_model):
    """The pair data, the policy's and a second model's (the reference) alone log-probs."""
    data = pair_dataset(tokenizer, PAIRS)
    torch.manual_seed(1)
    other = build_model(TINY, tokenizer, torch.float32).eval()
    return data, alone(tiny_model, data), alone(other, data)[0]


def _batches(data, reference, packing: bool):
    sampler = RankBatches(
        data, ROW_LEN, packing, 4, rank=0, world_size=1, seed=3, pad_id=0, pairs=True,
        reference=reference,
    )  # fmt: skip
    plan = sampler.plan(0)
    width = ROW_LEN if packing else None
    return [
        sampler.collate(sampler.my_rows(plan, np.zeros(len(plan)), i), width)
        for i in range(len(plan) // 4)
    ]


@pytest.mark.parametrize("name", OBJECTIVES)
@pytest.mark.parametrize("packing", [True, False], ids=["packed", "padded"])
def test_each_loss_is_the_published_formula_summed_over_pairs(pairs, tiny_model, name, packing):
    data, (policy, counts), reference = pairs
    cfg = OBJECTIVES[name]
    objective = PreferenceObjective(cfg, cpu_loss(chunk_tokens=7))
    seen, total = [], 0.0
    for batch in _batches(data, reference, packing):
        total += objective.summed_loss(tiny_model, batch).item()
        seen += batch["pair_ids"].tolist()
    expected = sum(published(cfg, *policy[p], *reference[p], *counts[p]) for p in seen)
    assert len(seen) == len(set(seen)) >= PAIRS // 2
    assert total == pytest.approx(expected, rel=1e-6)
    metrics = objective.step_metrics(torch.device("cpu"))
    chosen_wins = np.mean([(policy[p, 0] - policy[p, 1]) > 0 for p in seen])
    if name == "simpo":  # rewards beta * mean log-prob
        mean = policy[seen] / counts[seen]
        assert metrics["rewards/accuracy"] == pytest.approx(np.mean(mean[:, 0] > mean[:, 1]))
        assert metrics["rewards/chosen"] == pytest.approx(cfg.beta * mean[:, 0].mean(), rel=1e-6)
    assert metrics["logps/chosen"] == pytest.approx(policy[seen, 0].mean(), rel=1e-6)
    assert 0.0 <= chosen_wins <= 1.0


def test_the_step_zero_check_finds_ln2_and_catches_a_wrong_reference(pairs, tiny_model):
    data, _, _ = pairs
    single_process_group()
    objective = PreferenceObjective(ObjectiveConfig(name="dpo"), cpu_loss())
    own, _ = split_logps(
        token_loss_fn(tiny_model, cpu_loss()), data, rows_per_batch=4,
        max_seq_len=ROW_LEN, rank=0, world=1, pad_id=0, device=torch.device("cpu"),
    )  # fmt: skip
    batch = _batches(data, own, packing=True)[0]
    loss, largest, gap = verify_reference(objective, tiny_model, batch, dtype=torch.float32)
    assert loss == pytest.approx(math.log(2), abs=1e-6) and largest < 1e-5 and gap < 1
    wrong = _batches(data, np.roll(own, 1, axis=0), packing=True)[0]  # another pair's
    with pytest.raises(ReferenceCheckFailed, match="do not belong to this model or data"):
        verify_reference(objective, tiny_model, wrong, dtype=torch.float32)


def _pair_layout(rank, world, port, accum, mbs, tok_dir, reference_file, out_file, name):
    join_group(rank, world, port)
    cfg = TrainConfig(model=TINY)
    cfg.trainer.micro_batch_size, cfg.trainer.grad_accum_steps = mbs, accum
    cfg.trainer.lr, cfg.trainer.warmup_steps, cfg.trainer.max_steps = 1e-2, 0, 100
    cfg.objective = OBJECTIVES[name]
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, torch.float32)
    ds_config = deepspeed_config(cfg, world_size=world, precision="fp32", gpu=False)
    engine = build_engine(model, cfg, ds_config=ds_config, device=torch.device("cpu"))
    batches = iter(
        RankBatches(
            pair_dataset(tokenizer, LAYOUT_PAIRS), ROW_LEN, True, mbs, rank=rank, world_size=world,
            seed=0, pad_id=0, pairs=True, reference=np.load(reference_file),
        )
    )  # fmt: skip
    objective, cpu = build_objective(cfg), torch.device("cpu")
    steps = [train_step(engine, batches, accum, cpu, objective=objective) for _ in range(2)]
    state = gather_state_dict(engine.module, 2)
    if rank == 0:
        keys = ("loss", "grad_norm", "rewards/margin", "rewards/accuracy", "logps/chosen")
        record = {key: [s[key] for s in steps] for key in keys}
        torch.save({"losses": record.pop("loss"), "grad_norms": record.pop("grad_norm"),
                    "metrics": record, "state": state}, out_file)  # fmt: skip
    leave_group()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dpo", "orpo"])
def test_preference_steps_are_the_same_whatever_the_layout(tmp_path, tokenizer, name):
    """Two DeepSpeed (ZeRO-2) steps over the same 8 packed rows a step: one rank x 4
    accumulation steps, two ranks x 2, two ranks x 1 with 4 rows each."""
    tok_dir = tmp_path / "tokenizer"
    tokenizer.save_pretrained(tok_dir)
    torch.manual_seed(1)
    reference = alone(
        build_model(TINY, tokenizer, torch.float32).eval(), pair_dataset(tokenizer, LAYOUT_PAIRS)
    )[0]
    np.save(tmp_path / "reference.npy", reference)
    results = []
    for world, accum, mbs in [(1, 4, 2), (2, 2, 2), (2, 1, 4)]:
        out = tmp_path / f"{name}-{world}x{accum}x{mbs}.pt"
        spawn(
            _pair_layout,
            world,
            accum,
            mbs,
            str(tok_dir),
            str(tmp_path / "reference.npy"),
            str(out),
            name,
        )
        results.append(torch.load(out, weights_only=True))
    for layout in results[1:]:
        assert_same(results[0], layout, weight_rtol=1e-4)
        for key, values in results[0]["metrics"].items():
            assert layout["metrics"][key] == pytest.approx(values, rel=1e-5, abs=1e-7), key
    assert results[0]["losses"][1] != pytest.approx(results[0]["losses"][0], rel=1e-3)  # it trained
