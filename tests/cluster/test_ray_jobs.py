"""launch/submit.py against a real Ray cluster: training runs submitted as Ray jobs
(Ray's Job Submission API), their logs streamed, their statuses as exit codes; list,
logs, stop; and submissions refused before they reach the cluster.

The module starts its own one-node cluster (2 CPUs; its own ports, temp dir and
authentication token; the venv's bin first on PATH, so the job's `python` is the venv's)
and stops that cluster alone, by its processes: `ray stop` would stop every cluster on
the machine."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from framework.cluster.ray_jobs import EXIT_STOPPED
from tests.helpers import ROOT, TINY_RUN

VENV_BIN = Path(sys.executable).parent
SECRET = "sentinel-secret-3b7e1d"
SMALL_RUN = [
    "trainer.max_steps=4",
    "trainer.log_every=1",
    "trainer.save_every=2",
    "trainer.warmup_steps=1",
    "data.suite.train_examples=200",
    *TINY_RUN,
]


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for sock in sockets:
        sock.bind(("127.0.0.1", 0))
    ports = [sock.getsockname()[1] for sock in sockets]
    for sock in sockets:
        sock.close()
    return ports


@dataclass
class Cluster:
    address: str  # the dashboard
    token: str  # Ray's token authentication, on as on a default `ray start` cluster

    def client_env(self) -> dict[str, str]:
        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            env.pop(name, None)
        return env

    def get(self, path: str):
        """The dashboard's REST API, as anyone with the token sees it."""
        request = urllib.request.Request(
            self.address + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


def _wait_for_dashboard(cluster: Cluster, ray_start: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert ray_start.poll() is None, "ray start exited"
        try:
            cluster.get("/api/version")
            return
        except OSError:  # not listening yet
            time.sleep(1)
    raise AssertionError(f"the dashboard at {cluster.address} never answered")


def _stop(ray_start: subprocess.Popen) -> None:
    """Stop the processes `ray start --block` started (and what they started: workers,
    job drivers) by pid, as `ray stop` does: SIGTERM, then SIGKILL for what remains."""
    family = [psutil.Process(ray_start.pid), *psutil.Process(ray_start.pid).children(True)]
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended with its parent
            process.terminate()
    _, alive = psutil.wait_procs(family, timeout=5)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)


@pytest.fixture(scope="module")
def cluster():
    # Short: Ray's socket paths under the temp dir must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="rayjobs-", dir="/tmp")
    gcs, dash, client, agent, agent_grpc, metrics, runtime_env, node, objects = _free_ports(9)
    cluster = Cluster(address=f"http://127.0.0.1:{dash}", token=secrets.token_hex(32))
    env = cluster.client_env()
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    # --block: the cluster's processes stay children of this one, to be stopped by pid.
    ray_start = subprocess.Popen(
        [
            VENV_BIN / "ray",
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            "--num-cpus=2",
            "--include-dashboard=true",
            f"--temp-dir={temp_dir}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--metrics-export-port={metrics}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--node-manager-port={node}",
            f"--object-manager-port={objects}",
            "--disable-usage-stats",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_dashboard(cluster, ray_start)
        yield cluster
    finally:
        _stop(ray_start)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _command(address: str, args) -> list[str]:
    return [sys.executable, "launch/submit.py", "--address", address, *args]


def submit_py(cluster: Cluster, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
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


def job_id(result: subprocess.CompletedProcess) -> str:
    return next(
        line.split()[1] for line in result.stdout.splitlines() if line.startswith("submitted ")
    )


def test_submission_without_an_absolute_output_dir_is_refused_before_the_cluster():
    nobody = Cluster(f"http://127.0.0.1:{_free_ports(1)[0]}", token="")  # nothing listens
    for overrides in ([], ["run.output_dir=outputs/relative"]):
        result = submit_py(nobody, "--", *SMALL_RUN, *overrides, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "needs run.output_dir=<absolute path" in result.stderr
        assert "submitted" not in result.stdout


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
    assert f"{job_id(too_big)} FAILED (exit code 1)" in too_big.stdout
    # Without the check, Ray would wait for the missing CPUs with no end.
    assert failed_in_s < 60

    out = tmp_path / "run"
    run = submit_py(cluster, "--", f"run.output_dir={out}", *SMALL_RUN)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert f"done: {out}/hf holds the trained model" in run.stdout
    assert f"{job_id(run)} SUCCEEDED (exit code 0)" in run.stdout
    assert (out / "hf" / "config.json").exists()

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
    follower = subprocess.Popen(
        _command(cluster.address, ["--", *overrides]),
        cwd=ROOT,
        env=cluster.client_env(),
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        # As at a terminal: a shell's background job (`make test &`) starts every child
        # with SIGINT ignored, and Python then never raises KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
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
