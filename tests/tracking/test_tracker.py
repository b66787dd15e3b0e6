"""Tracking on rank 0: wandb start-up when a run id is still held by a dead worker's wandb
service, and a loop that raises still leaving its summary and a finished wandb run."""

from __future__ import annotations

import json

import pytest
import wandb

from framework.run.files import METRICS_FILE, SUMMARY_FILE
from framework.tracking import tracker as tracking
from tests.helpers import TINY_RUN, compose_config


class _Calls:
    def __init__(self, failures: list[Exception]):
        self.failures = failures
        self.inits = 0
        self.teardowns = 0

    def init(self, **kwargs):
        self.inits += 1
        if self.failures:
            raise self.failures.pop(0)
        return ("run", kwargs)

    def teardown(self):
        self.teardowns += 1


@pytest.fixture
def calls(monkeypatch):
    # Stand-ins at the edge we cannot produce on demand: a wandb service that still holds
    # the id after Ray replaced the workers (seen once under load in the resume test).
    recorded = _Calls([])
    monkeypatch.setattr(wandb, "init", recorded.init)
    monkeypatch.setattr(wandb, "teardown", recorded.teardown)
    monkeypatch.setattr(tracking.time, "sleep", lambda seconds: None)
    return recorded


def test_a_run_id_in_use_is_retried_with_a_service_of_our_own(calls, monkeypatch):
    monkeypatch.setenv("WANDB_SERVICE", "unix-1234-/tmp/stale.sock")
    calls.failures = [RuntimeError("run ID 1a2b3c4d is in use")] * 2
    assert tracking._init_wandb(id="1a2b3c4d") == ("run", {"id": "1a2b3c4d"})
    assert (calls.inits, calls.teardowns) == (3, 2)
    assert "WANDB_SERVICE" not in tracking.os.environ


def test_other_errors_and_a_persistent_clash_are_raised(calls):
    calls.failures = [ValueError("bad project name")]
    with pytest.raises(ValueError, match="bad project name"):
        tracking._init_wandb(project="?")
    assert calls.inits == 1
    calls.failures = [RuntimeError("run ID x is in use")] * 10
    with pytest.raises(RuntimeError, match="is in use"):
        tracking._init_wandb(id="x")
    assert calls.inits == 1 + tracking._WANDB_INIT_TRIES


STEP = {
    "loss": 2.5,
    "tokens": 100.0,
    "trained_tokens": 40.0,
    "step_time_s": 0.5,
    "skipped": 0,
    "peak_memory_gb": 1.0,
    "tokens_per_s": 200.0,
}


def test_a_loop_that_raises_still_writes_the_summary_and_finishes_wandb(tmp_path, monkeypatch):
    cfg = compose_config(
        [*TINY_RUN, "logger=wandb", "logger.mode=offline", f"run.output_dir={tmp_path}"]
    )
    finished = []
    real_finish = wandb.sdk.wandb_run.Run.finish

    def finish(run, *args, exit_code=None, **kwargs):
        finished.append(exit_code)
        return real_finish(run, *args, exit_code=exit_code, **kwargs)

    monkeypatch.setattr(wandb.sdk.wandb_run.Run, "finish", finish)
    with (
        pytest.raises(RuntimeError, match="worker died"),
        tracking.Tracker(cfg, enabled=True) as tracker,
    ):
        tracker.step(STEP)
        tracker.log(1, STEP)
        raise RuntimeError("worker died")
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["steps"] == 1 and summary["final_loss"] == 2.5 and summary["tokens"] == 100
    assert summary["failed"] is True and "stopped" not in summary
    assert finished == [1] and wandb.run is None  # finished, marked failed
    assert [json.loads(line)["step"] for line in (tmp_path / METRICS_FILE).open()] == [1]


def test_skipped_steps_are_summed_with_their_reasons_and_a_stop_is_said(tmp_path):
    cfg = compose_config([*TINY_RUN, "logger=none", f"run.output_dir={tmp_path}"])
    gradient = {**STEP, "skipped": 1, "skipped_non_finite_grad_norm": 1}
    loss = {**STEP, "skipped": 1, "skipped_non_finite_loss": 1}
    with tracking.Tracker(cfg, enabled=True) as tracker:
        for metrics in (STEP, gradient, gradient, loss):
            tracker.step(metrics)
        tracker.stop(5, STEP, "stop requested (signal)", logged=False)
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert summary["skipped_steps"] == 3
    assert summary["skipped_steps_non_finite_grad_norm"] == 2
    assert summary["skipped_steps_non_finite_loss"] == 1
    # Skipped steps' tokens were read, not trained on.
    assert (summary["tokens"], summary["trained_tokens"]) == (400, 40)
    assert summary["stopped"] == "stop requested (signal)" and "failed" not in summary
    assert [json.loads(line)["step"] for line in (tmp_path / METRICS_FILE).open()] == [5]


def test_a_resume_with_no_step_left_keeps_the_last_loss_and_evaluation(tmp_path):
    """A rerun after a stop at the last step only exports: its summary must not turn the
    final loss into NaN and drop the evaluation."""
    cfg = compose_config([*TINY_RUN, "logger=none", f"run.output_dir={tmp_path}"])
    with tracking.Tracker(cfg, enabled=True) as tracker:
        tracker.step(STEP)
        tracker.log(1, STEP)
        tracker.log_eval(1, {"eval_loss": 1.25}, [], [])
    with tracking.Tracker(cfg, enabled=True, start_step=1, totals=tracker.totals):
        pass
    summary = json.loads((tmp_path / SUMMARY_FILE).read_text())
    assert (summary["final_loss"], summary["eval_loss"], summary["tokens"]) == (2.5, 1.25, 100)
    assert "step" not in summary and "time" not in summary
