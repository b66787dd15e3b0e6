"""When a run stops early: signals, the driver's stop file, a Slurm job's time limit."""

from __future__ import annotations

import os
import signal
import time
from datetime import datetime

import pytest
import torch

from framework.run.files import write_stop_request
from framework.train.stopping import StopCheck, slurm_deadline
from tests.helpers import single_process_group

CPU = torch.device("cpu")


@pytest.fixture
def restore_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


def test_nothing_asks_to_stop(tmp_path, restore_signals):
    single_process_group()
    assert StopCheck(tmp_path, deadline=None, margin_s=60).reason(0, CPU) is None


def test_the_drivers_stop_file_stops_every_rank(tmp_path, restore_signals):
    single_process_group()
    check = StopCheck(tmp_path, deadline=None, margin_s=60)
    write_stop_request(tmp_path, "SIGTERM")
    assert check.reason(0, CPU) == "stop requested (signal)"


def test_a_signal_to_the_worker_itself_stops_it(tmp_path, restore_signals):
    single_process_group()
    check = StopCheck(tmp_path, deadline=None, margin_s=60)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert check.reason(0, CPU) == "stop requested (signal)"


def test_the_time_limit_stops_before_the_deadline_with_room_for_a_step(tmp_path, restore_signals):
    single_process_group()
    check = StopCheck(tmp_path, deadline=time.time() + 100, margin_s=60)
    assert check.reason(0, CPU) is None  # 100 s left, 60 s needed
    check.observe(55.0)  # a step plus a save took 55 s: keep twice that in hand
    assert check.reason(0, CPU) == "the Slurm job's time limit is near"


def test_slurm_deadline_from_the_environment(monkeypatch):
    monkeypatch.setenv("SLURM_JOB_END_TIME", "1790000000")
    assert slurm_deadline() == 1790000000.0


def test_slurm_deadline_from_squeue(monkeypatch, tmp_path):
    squeue = tmp_path / "squeue"
    squeue.write_text('#!/bin/sh\n[ "$3" = 4242 ] && echo 2026-11-25T05:00:00\n')
    squeue.chmod(0o755)
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert slurm_deadline() == datetime(2026, 11, 25, 5, 0, 0).timestamp()


def test_no_slurm_limit_means_no_deadline(monkeypatch, tmp_path):
    squeue = tmp_path / "squeue"
    squeue.write_text("#!/bin/sh\necho UNLIMITED\n")
    squeue.chmod(0o755)
    monkeypatch.delenv("SLURM_JOB_END_TIME", raising=False)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "1")
    assert slurm_deadline() is None
    monkeypatch.delenv("SLURM_JOB_ID")
    assert slurm_deadline() is None
