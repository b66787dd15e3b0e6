"""A one-node Ray cluster for the tests: started once per session (conftest's
ray_cluster), joined by every run through RAY_ADDRESS, stopped by its processes' pids."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import psutil

from tests.helpers import free_ports

VENV_BIN = Path(sys.executable).parent


@dataclass
class RayCluster:
    """A one-node Ray started by start_ray_cluster: its dashboard, the GCS address that
    drivers join (RAY_ADDRESS) and its authentication token."""

    address: str  # the dashboard
    gcs: str
    token: str  # Ray's token authentication, on as on a default `ray start` cluster
    process: subprocess.Popen
    temp_dir: str

    def client_env(self) -> dict[str, str]:
        """This environment, authenticated to the cluster, joining no other."""
        env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        for name in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
            env.pop(name, None)
        return env

    def train_workers(self) -> list[psutil.Process]:
        """Its live Ray Train workers (a test beside it may run a Ray of its own)."""
        workers = []
        for p in psutil.Process(self.process.pid).children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                if "RayTrainWorker" in " ".join(p.cmdline()) and p.status() != psutil.STATUS_ZOMBIE:
                    workers.append(p)
        return workers

    def joining(self) -> dict[str, str]:
        """The variables with which a driver (ray.init, launch/train.py) joins the cluster."""
        return {"RAY_ADDRESS": self.gcs, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def driver_env(self) -> dict[str, str]:
        """This environment, joining the cluster."""
        return dict(os.environ, **self.joining())

    def get(self, path: str):
        """The dashboard's REST API, as anyone with the token sees it."""
        request = urllib.request.Request(
            self.address + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


def start_ray_cluster() -> RayCluster:
    """A one-node cluster of 2 CPUs with its own ports, temp dir and token, the venv's bin
    first on PATH (so a job's `python` is the venv's), answering on its dashboard."""
    # Short: Ray's socket paths under the temp dir must fit in 107 bytes.
    temp_dir = tempfile.mkdtemp(prefix="raytest-", dir="/tmp")
    gcs, dash, client, agent, agent_grpc, metrics, runtime_env, node, objects = free_ports(9)
    # The cluster's own processes find it by RAY_ADDRESS, not by /tmp/ray/ray_current_cluster,
    # which names the last cluster started with the default temp dir, maybe long dead: Ray
    # Train's placement-group cleaner looked there and held every run's end 12-15 s.
    env = dict(os.environ, RAY_ADDRESS=f"127.0.0.1:{gcs}")
    token = secrets.token_hex(32)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    # --block: the cluster's processes stay children of this one, to be stopped by pid.
    process = subprocess.Popen(
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
    cluster = RayCluster(f"http://127.0.0.1:{dash}", f"127.0.0.1:{gcs}", token, process, temp_dir)
    try:
        _wait_for_dashboard(cluster)
    except BaseException:
        stop_ray_cluster(cluster)
        raise
    return cluster


def _wait_for_dashboard(cluster: RayCluster) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert cluster.process.poll() is None, "ray start exited"
        try:
            cluster.get("/api/version")
            return
        except OSError:  # not listening yet
            time.sleep(1)
    raise AssertionError(f"the dashboard at {cluster.address} never answered")


def stop_ray_cluster(cluster: RayCluster) -> None:
    """Stop the processes `ray start --block` started (and what they started: workers,
    job drivers) by pid, as `ray stop` does: SIGTERM, then SIGKILL for what remains. (`ray
    stop` would stop every cluster on the machine.)"""
    root = psutil.Process(cluster.process.pid)
    family = [root, *root.children(True)]
    for process in family:
        with contextlib.suppress(psutil.NoSuchProcess):  # ended with its parent
            process.terminate()
    _, alive = psutil.wait_procs(family, timeout=5)
    for process in alive:
        process.kill()
    psutil.wait_procs(alive, timeout=10)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)
