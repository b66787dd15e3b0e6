"""wandb start-up on rank 0: a run id still held by a dead worker's wandb service."""

from __future__ import annotations

import pytest
import wandb

from framework import tracking


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
