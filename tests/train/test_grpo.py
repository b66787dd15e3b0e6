"""objective=grpo through the real loop (2 gloo ranks, DeepSpeed ZeRO-2, the tiny model):
sampled completions rewarded by IFEval's checkers, the learner's log-probs equal to the
sampler's on every fresh batch, and a run resumed inside a round ending exactly as the
straight run. (ZeRO-3 with a LoRA adapter: tests/cluster/test_ray_generation.py.)"""

from __future__ import annotations

import shutil

import pytest

from framework.run.checkpoints import read_progress, step_dir
from tests.helpers import assert_same_run, logged, losses, run
from tests.helpers.rl import grpo_overrides


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, tmp_path_factory):
    """grpo_overrides' run: 5 optimizer steps, 2 updates per generation batch (rounds at steps 1, 3
    and 5), a checkpoint every step."""
    root = tmp_path_factory.mktemp("grpo")
    overrides = grpo_overrides(root, tiny_model_dir)
    run(root / "run", root / "cache", *overrides)
    return root, overrides


def test_rewards_and_the_policy_gradient_checks_are_logged(grpo_run):
    root, _ = grpo_run
    steps = logged(root / "run")
    assert [m["step"] for m in steps] == [1, 2, 3, 4, 5]
    for m in steps:
        assert 0 <= m["reward"] <= 1 and m["reward/ifeval"] == m["reward"]
        assert m["completions_per_s"] > 0 and 0 <= m["truncated"] <= 1
    fresh = [m for m in steps if "first_update_logp_gap" in m]
    assert [m["step"] for m in fresh] == [1, 3, 5]  # the first update of each round
    # The learner's old log-probs: the ratio starts at 1 exactly. fp32: the sampler's
    # log-probs are the learner's too (KV cache vs packed rows: summation order only).
    assert all(m["first_update_logp_gap"] < 1e-6 for m in fresh)
    assert all(m["logp_gap_max"] < 1e-4 for m in steps)
    assert any(m["loss"] != 0 for m in steps)  # rewards differed within some group


def test_a_checkpoint_inside_a_round_keeps_its_batches(grpo_run):
    root, _ = grpo_run
    progress = read_progress(step_dir(root / "run" / "checkpoints", 3))
    assert progress["sampler"] == {"round": 2, "used": 1}


def test_a_grpo_run_resumed_inside_a_round_ends_exactly_as_the_straight_run(grpo_run, tmp_path):
    """From step 3's checkpoint, inside round 2: step 4 trains on the round's kept batches,
    step 5 samples round 3 afresh, from the seed, as the straight run did."""
    root, overrides = grpo_run
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(step_dir(root / "run" / "checkpoints", 3), step_dir(out / "checkpoints", 3))
    run(out, root / "cache", *overrides)
    assert sorted(losses(out)) == [4, 5]
    assert_same_run(out, root / "run", [4, 5], rtol=1e-6)
