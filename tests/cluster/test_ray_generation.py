"""objective=grpo under ZeRO-3 with a LoRA adapter, sampled two ways: by the learners
themselves (2 gloo ranks, no Ray: every forward a collective, so the ranks sample in
step) and by a generation actor through the real command (Hydra -> Ray Train ->
DeepSpeed, joining the session's Ray cluster). In fp32 the two runs are the same run."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from safetensors.torch import load_file

from framework.report.page import write_report
from tests.helpers import ROOT, RUN, logged, run
from tests.helpers.rl import grpo_overrides

# 3 steps of 2 updates a round: rounds at steps 1 and 3. The actor reserves no CPU: the
# session's cluster has 2, one for each worker.
ZERO3_LORA = ["parallelism=zero3", "adapter=lora", "adapter.dropout=0", "trainer.max_steps=3"]
ACTORS = ["rollout.generator=actors", "rollout.cpus_per_generator=0"]


def _size_mb(path) -> float:
    return sum(t.numel() * t.element_size() for t in load_file(path).values()) / 1e6


def test_a_generation_actor_samples_the_rounds_the_learners_would(
    tmp_path, ray_cluster, tiny_model_dir
):
    overrides = [*RUN, *grpo_overrides(tmp_path, tiny_model_dir), *ZERO3_LORA]
    colocated, actors = tmp_path / "colocated", tmp_path / "actors"
    run(colocated, tmp_path / "cache", *overrides)
    want = logged(colocated)
    assert [m["step"] for m in want] == [1, 2, 3]
    assert all(m["first_update_logp_gap"] < 1e-6 for m in want if "first_update_logp_gap" in m)
    assert all(m["weight_sync_mb"] == 0 for m in want)

    result = subprocess.run(
        [sys.executable, "launch/train.py", *overrides, *ACTORS, f"run.output_dir={actors}",
         f"run.cache_dir={tmp_path / 'cache'}"],
        cwd=ROOT, env=ray_cluster.driver_env(), capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = logged(actors)
    assert [m["step"] for m in steps] == [1, 2, 3]
    # The same completions (rewards and lengths), then the same updates.
    for key in ("reward", "completion_tokens", "loss"):
        np.testing.assert_allclose([m[key] for m in steps], [m[key] for m in want], rtol=1e-5)
    # Before round 1 the whole model went to the actor, before round 2 the adapter alone.
    adapter = _size_mb(actors / "hf_adapter" / "adapter_model.safetensors")
    base = _size_mb(tiny_model_dir / "model.safetensors")
    assert np.isclose(steps[0]["weight_sync_mb"], base + adapter)
    assert np.isclose(steps[2]["weight_sync_mb"], adapter)
    assert steps[0]["weight_sync_s"] > 0
    # The report shows both runs' rounds, and the actors' weight transfers.
    page = write_report([colocated, actors], tmp_path / "report.html").read_text()
    assert "<h2>Online RL</h2>" in page and "weights sent to the generation actors" in page
