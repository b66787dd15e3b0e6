"""objective=grpo through the real loop (2 gloo ranks, DeepSpeed ZeRO-2, the tiny model):
sampled completions rewarded by IFEval's checkers, the learner's log-probs equal to the
sampler's on every fresh batch, a run resumed inside a round ending exactly as the
straight run, and ZeRO-3 with a LoRA adapter."""

from __future__ import annotations

import json
import shutil

import pytest

from framework.run.checkpoints import read_progress, step_dir
from tests.helpers import assert_same_run, logged, losses, run

INSTRUCTIONS = [
    "Describe a rainy afternoon in a small town.",
    "Explain how a bicycle stays upright when moving.",
    "Give advice to someone starting to learn the piano.",
    "Write about the smell of fresh bread in the morning.",
    "Summarise why people enjoy walking in forests.",
    "List reasons to keep a paper notebook.",
]


@pytest.fixture(scope="module")
def grpo_run(tiny_model_dir, tmp_path_factory):
    """5 optimizer steps, 2 updates per generation batch (rounds at steps 1, 3 and 5), a
    checkpoint every step."""
    root = tmp_path_factory.mktemp("grpo")
    prompts = root / "prompts.jsonl"
    # A budget that random text meets in some completions and misses in others.
    spec = {
        "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"relation": "less than", "num_words": 8}],
    }
    records = [{"instruction": i, "verifier": "ifeval", "spec": spec} for i in INSTRUCTIONS]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    overrides = [
        f"model.name_or_path={tiny_model_dir}",
        "objective=grpo",
        f"data.sources=[{{path: {prompts}, format: alpaca}}]",
        "data.max_seq_len=256",
        "rollout.group_size=4",
        "rollout.batch_completions=8",
        "rollout.max_new_tokens=24",
        "objective.updates_per_batch=2",
        "trainer.max_steps=5",
        "trainer.lr=5e-3",
        "checkpoint.every=1",
        "eval.samples=0",
        "eval.suite_per_family=0",
    ]
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


def test_grpo_with_lora_under_zero3_samples_in_step_and_exports_the_adapter(grpo_run, tmp_path):
    """ZeRO-3 (every forward a collective: the ranks sample in step) with a LoRA adapter:
    the ratio still starts at 1 and the adapter is exported beside the merged model."""
    root, overrides = grpo_run
    out = tmp_path / "run"
    more = ["parallelism=zero3", "adapter=lora", "adapter.dropout=0", "trainer.max_steps=2"]
    run(out, root / "cache", *overrides, *more)
    steps = logged(out)
    assert [m["step"] for m in steps] == [1, 2]
    assert steps[0]["first_update_logp_gap"] < 1e-6
    assert (out / "hf_adapter" / "adapter_model.safetensors").is_file()
