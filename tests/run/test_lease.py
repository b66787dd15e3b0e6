"""The run directory's lease: one holder at a time (also when many start at once), taken
over only from a holder that is gone (stale heartbeat, dead process, Slurm requeue)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, replace

import pytest

from framework.run.files import LEASE_FILE
from framework.run.lease import Holder, LeaseHeld, RunLease, _create, read_holder, this_process


def plant(out, **fields) -> Holder:
    """A lease file held by someone else (another host, a fresh heartbeat, unless told)."""
    held = replace(this_process(), **{"host": "other-node", "pid": 4242, **fields})
    out.mkdir(exist_ok=True)
    (out / LEASE_FILE).write_text(json.dumps(asdict(held)))
    return held


def take_over(out, **fields) -> Holder:
    """What a taker does to a lease: replace it under the takeover lock, which the holder's
    heartbeat also takes, so the heartbeat cannot write over the taker's lease."""
    lock = out / f"{LEASE_FILE}.takeover"
    deadline = time.monotonic() + 10
    while not _create(lock, this_process()):
        assert time.monotonic() < deadline, "the holder never let go of the takeover lock"
        time.sleep(0.01)
    try:
        return plant(out, **fields)
    finally:
        lock.unlink()


def test_a_second_run_is_refused_naming_the_holder_until_the_first_releases(tmp_path):
    first = RunLease(tmp_path, 60).acquire()
    held = read_holder(tmp_path / LEASE_FILE)
    assert held.token == first.me.token
    with pytest.raises(LeaseHeld) as refused:
        RunLease(tmp_path, 60).acquire()
    message = str(refused.value)
    assert f"pid {held.pid} on {held.host}" in message
    assert "run.output_dir" in message and "run.lease_stale_s" in message
    first.release()
    assert not (tmp_path / LEASE_FILE).exists()
    with RunLease(tmp_path, 60).acquire():
        assert (tmp_path / LEASE_FILE).exists()
    assert not (tmp_path / LEASE_FILE).exists()


def test_a_fresh_lease_of_another_host_is_refused_and_a_stale_one_taken_over(tmp_path, capsys):
    plant(tmp_path, slurm_job="77")
    with pytest.raises(LeaseHeld, match=r"Slurm job 77.*scancel 77"):
        RunLease(tmp_path, 60).acquire()
    old = plant(tmp_path, heartbeat=time.time() - 61)
    lease = RunLease(tmp_path, 60).acquire()
    assert read_holder(tmp_path / LEASE_FILE).token == lease.me.token != old.token
    assert "heartbeat is 61 s old" in capsys.readouterr().out
    lease.release()


def test_a_lease_whose_process_died_on_this_host_is_taken_over_at_once(tmp_path, capsys):
    script = "import os; print(os.getpid())"
    gone = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    plant(tmp_path, host=this_process().host, pid=int(gone.stdout))
    with RunLease(tmp_path, 3600).acquire():
        assert f"its process {int(gone.stdout)}" in capsys.readouterr().out


def test_a_requeued_slurm_job_takes_over_its_own_lease(tmp_path, monkeypatch, capsys):
    plant(tmp_path, slurm_job="501", slurm_restart=0)
    monkeypatch.setenv("SLURM_JOB_ID", "501")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")  # the same run of the job: a second step
    with pytest.raises(LeaseHeld):
        RunLease(tmp_path, 3600).acquire()
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    with RunLease(tmp_path, 3600).acquire():
        assert "Slurm requeued job 501" in capsys.readouterr().out
    monkeypatch.setenv("SLURM_JOB_ID", "502")  # another job is not a requeue
    plant(tmp_path, slurm_job="501", slurm_restart=0)
    with pytest.raises(LeaseHeld):
        RunLease(tmp_path, 3600).acquire()


def test_the_heartbeat_renews_the_lease_and_a_lost_lease_is_left_to_its_taker(tmp_path, capsys):
    lease = RunLease(tmp_path, 0.2).acquire()
    first = read_holder(tmp_path / LEASE_FILE).heartbeat
    time.sleep(0.3)
    assert read_holder(tmp_path / LEASE_FILE).heartbeat > first
    with pytest.raises(LeaseHeld):  # renewed: never stale while its holder lives
        RunLease(tmp_path, 0.2).acquire()
    taker = take_over(tmp_path, heartbeat=time.time() + 3600)
    time.sleep(0.3)
    lease.release()
    assert read_holder(tmp_path / LEASE_FILE) == taker  # not overwritten, not removed
    assert "was taken over by pid 4242 on other-node" in capsys.readouterr().err


@pytest.mark.parametrize("stale", [False, True])
def test_of_many_runs_starting_at_once_exactly_one_gets_the_lease(tmp_path, stale):
    """Eight at once, on a free directory or on one with a stale lease that all of them
    try to take over: one holds it, seven are refused."""
    if stale:
        plant(tmp_path, heartbeat=time.time() - 3600)
    start = threading.Barrier(8)
    won, refused = [], []

    def contend():
        lease = RunLease(tmp_path, 60)
        start.wait()
        try:
            won.append(lease.acquire())
        except LeaseHeld:
            refused.append(lease)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(won), len(refused)) == (1, 7)
    assert read_holder(tmp_path / LEASE_FILE).token == won[0].me.token
    won[0].release()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging files left
