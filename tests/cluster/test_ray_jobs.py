"""launch/submit.py against a real Ray cluster: training runs submitted as Ray jobs
(Ray's Job Submission API), their logs streamed, their statuses as exit codes; list,
logs, stop; and submissions refused before they reach the cluster.

The jobs run on the session's one-node cluster (conftest's ray_cluster: 2 CPUs; its own
ports, temp dir and authentication token; the venv's bin first on PATH, so the job's
`python` is the venv's), which the end-to-end training runs join too; a head lost mid-job,
on clusters of the test's own."""

from __future__ import annotations

import contextlib
import json
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from framework.cluster.ray_jobs import EXIT_STOPPED, head_answers
from framework.run.checkpoints import committed
from tests.helpers import (
    ROOT,
    RUN,
    TINY_RUN,
    ZERO3_RUN,
    free_port,
    logged,
    losses,
    weights,
)
from tests.helpers.cluster import RayCluster

SECRET = "sentinel-secret-3b7e1d"
SMALL_RUN = [
    "trainer.max_steps=4",
    "trainer.log_every=1",
    "checkpoint.every=2",
    "trainer.warmup_steps=1",
    "data.suite.train_examples=200",
    *TINY_RUN,
]


@pytest.fixture
def cluster(ray_cluster):
    return ray_cluster


def _command(address: str, args) -> list[str]:
    return [sys.executable, "launch/submit.py", "--address", address, *args]


def submit_py(cluster: RayCluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    # Secrets in the submitter's environment must not travel with the job.
    env = dict(cluster.client_env(), WANDB_API_KEY=SECRET, HF_TOKEN=SECRET)
    return subprocess.run(
        _command(cluster.address, args),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submit_in_background(cluster: RayCluster, overrides: list[str], log: Path):
    """submit.py following its job, its output to `log`."""
    return subprocess.Popen(
        _command(cluster.address, ["--", *overrides]),
        cwd=ROOT,
        env=cluster.client_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        # As at a terminal: a shell's background job (`make test &`) starts every child
        # with SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def job_id(result: subprocess.CompletedProcess) -> str:
    return next(
        line.split()[1] for line in result.stdout.splitlines() if line.startswith("submitted ")
    )


def test_submission_without_an_absolute_output_dir_is_refused_before_the_cluster():
    nobody = RayCluster(f"http://127.0.0.1:{free_port()}", "", "", None, "")  # nothing listens
    for overrides in ([], ["run.output_dir=outputs/relative"]):
        result = submit_py(nobody, "--", *SMALL_RUN, *overrides, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "needs run.output_dir=<absolute path" in result.stderr
        assert "submitted" not in result.stdout


def test_a_head_answers_while_its_dashboard_takes_connections():
    with socket.socket() as dashboard:
        dashboard.bind(("127.0.0.1", 0))
        dashboard.listen()
        address = f"http://127.0.0.1:{dashboard.getsockname()[1]}"
        assert head_answers(address)
    assert not head_answers(address)


@pytest.mark.slow
def test_runs_stream_their_logs_and_exit_with_the_job_status(cluster, tmp_path):
    started = time.monotonic()
    too_big = submit_py(
        cluster, "--", f"run.output_dir={tmp_path / 'big'}", *SMALL_RUN, "cluster.num_workers=5"
    )
    failed_in_s = time.monotonic() - started
    assert too_big.returncode == 1, too_big.stdout[-3000:] + too_big.stderr[-3000:]
    assert "error: cluster.num_workers=5 needs 5 CPUs and 0 GPUs" in too_big.stdout
    assert "node 0: 2 CPUs, 0 GPUs (room for 2)" in too_big.stdout
    assert "Traceback" not in too_big.stdout + too_big.stderr
    assert f"{job_id(too_big)} FAILED (exit code 1)" in too_big.stdout
    # Without the check, Ray would wait for the missing CPUs with no end.
    assert failed_in_s < 60

    out = tmp_path / "run"
    # Every third step logged, and the last one (the only check of trainer.log_every > 1).
    run = submit_py(cluster, "--", f"run.output_dir={out}", *SMALL_RUN, "trainer.log_every=3")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"done: {out}/hf holds the trained model" in run.stdout
    assert f"{job_id(run)} SUCCEEDED (exit code 0)" in run.stdout
    assert "Reporting training result" not in run.stdout  # Ray Train's dump of each report
    assert (out / "hf" / "config.json").exists()
    assert [m["step"] for m in logged(out)] == [3, 4]

    listing = submit_py(cluster, "list", timeout=60)
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()}
    assert rows[job_id(too_big)][1] == "FAILED" and "cluster.num_workers=5" in rows[job_id(too_big)]
    assert rows[job_id(run)][1] == "SUCCEEDED" and f"run.output_dir={out}" in rows[job_id(run)]
    # Ray shows every job's runtime_env on its dashboard.
    shown = json.dumps(cluster.get("/api/jobs/"))
    assert SECRET not in shown and cluster.token not in shown


@pytest.mark.slow
def test_ctrl_c_leaves_the_job_running_and_stop_ends_it(cluster, tmp_path):
    log = tmp_path / "submit.log"
    overrides = [f"run.output_dir={tmp_path / 'run'}", *SMALL_RUN, "trainer.max_steps=100000"]
    follower = submit_in_background(cluster, overrides, log)
    _wait_for(lambda: "submitted " in log.read_text(), "the job id", log)
    job = log.read_text().split("submitted ")[1].split()[0]
    _wait_for(lambda: cluster.get(f"/api/jobs/{job}")["status"] == "RUNNING", "RUNNING", log)
    follower.send_signal(signal.SIGINT)
    assert follower.wait(timeout=60) == 130
    assert f"{job} keeps running; stop it with: " in log.read_text()
    assert f"--address {cluster.address} stop {job}" in log.read_text()
    assert cluster.get(f"/api/jobs/{job}")["status"] == "RUNNING"

    stop = submit_py(cluster, "stop", job, timeout=60)
    assert stop.returncode == 0, stop.stderr
    logs = submit_py(cluster, "logs", job, timeout=400)
    assert logs.returncode == EXIT_STOPPED, logs.stdout[-3000:] + logs.stderr[-3000:]
    assert f"{job} STOPPED (exit code {EXIT_STOPPED})" in logs.stdout
    listing = submit_py(cluster, "list", timeout=60)
    assert f"{job}  STOPPED" in listing.stdout


def _wait_for(condition, what: str, log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} never came:\n{log.read_text()[-3000:]}")


@pytest.fixture
def own_ray_cluster():
    """A Ray cluster of the test's own (start_ray_cluster), to lose; stopped at the end,
    lost or not."""
    from tests.helpers.cluster import start_ray_cluster, stop_ray_cluster

    cluster = start_ray_cluster()
    yield cluster
    stop_ray_cluster(cluster)


@pytest.mark.slow
def test_a_lost_head_ends_the_follower_in_one_line_and_its_command_resumes(
    own_ray_cluster, cluster, zero3_run, tmp_path
):
    """The head of the cluster running a job lost mid-run (SIGKILL to every process of
    it: the job's driver and workers go with it): submit.py ends with one line saying so
    and the command to run; that command, on another cluster (the session's), resumes
    from the newest checkpoint and ends as the same run on 2 gloo ranks without Ray or a
    loss (conftest's zero3_run)."""
    out, log = tmp_path / "run", tmp_path / "submit.log"
    overrides = [
        *RUN, *ZERO3_RUN, "checkpoint.every=1", f"run.cache_dir={zero3_run / 'cache'}",
        f"run.output_dir={out}",
    ]  # fmt: skip
    lost = own_ray_cluster
    follower = submit_in_background(lost, overrides, log)
    _wait_for(lambda: committed(out / "checkpoints"), "a checkpoint", log)
    head = psutil.Process(lost.process.pid)
    for process in [head, *head.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
    assert follower.wait(timeout=60) == 1
    said = log.read_text()
    job = said.split("submitted ")[1].split()[0]
    assert f"error: the Ray head at {lost.address} stopped answering while {job} ran" in said
    command = shlex.split(said.split("resume from the newest with: ")[1].splitlines()[0])
    assert command[:4] == ["python", "launch/submit.py", "--address", lost.address]
    assert command[4:] == ["--", *overrides]

    again = submit_py(cluster, *command[4:])
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resuming from " in again.stdout
    got, want = losses(out), losses(zero3_run / "run")
    assert list(got) == list(want) == [1, 2, 3, 4]  # each step logged once
    np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-6)
    trained, straight = weights(out), weights(zero3_run / "run")
    for name, weight in straight.items():
        torch.testing.assert_close(trained[name], weight, rtol=1e-5, atol=1e-7)
