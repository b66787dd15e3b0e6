"""slurm/train_multi_node.sbatch on several nodes: a run on two hosts of their own network
that trains as one host does and leaves nothing behind; a node that never joins; what a GPU
job asks of its steps.

The Slurm commands are stand-ins (tests/slurm_standins/, first on PATH; SLURM_* set by
hand): `srun` runs its step's command on this machine, on the step's host where the test
made hosts (tests/helpers/netns.py: its own network and TMPDIR). Elsewhere every "node" is
this machine (NODE_IP=127.0.0.1, which Ray itself replaces with the machine's own address).
Ray, launch/train.py and DeepSpeed are real.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import secrets
import shlex
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from framework.run.checkpoints import committed
from framework.run.files import COMMIT_MARKER
from framework.suite.families import FAMILIES
from tests.helpers import RUN, ZERO3_RUN, losses, weights
from tests.helpers.netns import Host, namespace_hosts, refused
from tests.helpers.slurm import run_batch_script, standin_job_environment, start_batch_script

# --- Ray on two (and three) nodes --------------------------------------------------------


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_ray_port() -> int:
    """A RAY_PORT whose two neighbours (dashboard, client server) are free too."""
    for _ in range(100):
        port = random.randrange(20000, 29997)
        if all(_port_is_free(port + i) for i in range(3)):
            return port
    raise RuntimeError("no three free ports in a row between 20000 and 29999")


def _step_pids(tmp_path: Path) -> list[int]:
    """The processes of the `srun` steps (each runs its command in its own process)."""
    steps = tmp_path / "srun_pids"
    return [int(pid) for pid in steps.read_text().split()] if steps.exists() else []


@pytest.fixture
def ray_port(tmp_path):
    """The job's RAY_PORT. Afterwards, steps left running by a failed test are stopped
    (`ray start` stops its node's processes on SIGTERM)."""
    yield _free_ray_port()
    for pid in _step_pids(tmp_path):
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).terminate()


def _multi_node_environment(tmp_path: Path, port: int, nodes: list[str], **variables: str):
    return standin_job_environment(
        tmp_path,
        nodes,
        NODE_IP="127.0.0.1",
        WORKERS_PER_NODE="1",
        RAY_PORT=str(port),
        SRUN_STANDIN_PIDS=str(tmp_path / "srun_pids"),
        **variables,
    )


def _ray_processes(port: int) -> list[psutil.Process]:
    """Processes of the Ray cluster on `port`: each names the GCS address or port."""
    marks = (f":{port}", f"port={port}")
    found = []
    for process in psutil.process_iter(["cmdline"]):
        command = " ".join(process.info["cmdline"] or [])
        if any(mark in command for mark in marks):
            found.append(process)
    return found


def _assert_ray_is_gone(tmp_path: Path, port: int) -> None:
    """Every `srun` step ended and no process of the job's Ray is left (Ray's workers
    notice their raylet has gone within a few seconds)."""
    steps = _step_pids(tmp_path)
    assert steps, "no srun step ran"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [p for p in steps if psutil.pid_exists(p)] + _ray_processes(port)
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"left running after the job: {left}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# The faults' timeouts: a collective gives up after COLLECTIVE_TIMEOUT_S (above the few
# seconds by which the ranks of a restart reach their first barrier apart on this loaded
# machine); a host is cut off a little longer.
COLLECTIVE_TIMEOUT_S = 20
FAULTS = [
    "cluster.num_workers=2",  # on 3 hosts: one to spare
    "cluster.max_failures=2",
    f"cluster.collective_timeout_s={COLLECTIVE_TIMEOUT_S}",
    "cluster.node_wait_s=120",
    "checkpoint.every=1",  # whenever a fault lands, a step to resume from
]


@pytest.mark.slow
def test_hosts_lost_mid_run_lose_nothing_and_the_job_leaves_no_ray(tmp_path, ray_port, zero3_run):
    """ZeRO-3 on three hosts of their own network (namespaces: tests/helpers/netns.py), one
    Ray node of 1 CPU each, 2 workers. The batch script runs on the first host and finds
    the head's address as on a real cluster (`hostname --ip-address`); the workers' gloo
    can only meet over the links between the hosts, each loopback being its own. Mid-run,
    the second worker's host is cut off from the network past cluster.collective_timeout_s,
    then comes back; later the second worker's host (then) is killed outright (SIGKILL to
    all its processes) and comes back (its Ray started again, as a rebooted machine's).
    Each time the console names the host, and Ray restarts the workers on the hosts it
    has from the newest checkpoint. The steps logged once each, the suite's answers and the
    final weights equal those of the same run on 2 gloo ranks of one host, without Ray and
    without faults (the session's zero3_run)."""
    if why := refused():
        pytest.skip(why)
    nodes = ["node1", "node2", "node3"]
    with namespace_hosts(nodes) as hosts:
        env = _multi_node_environment(tmp_path, ray_port, nodes)
        del env["NODE_IP"]
        env["SRUN_STANDIN_HOSTS"] = " ".join(f"{h.name}={h.run}" for h in hosts)
        overrides = [*RUN, *ZERO3_RUN, f"run.cache_dir={zero3_run / 'cache'}", *FAULTS]
        env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)  # for the host that comes back
        log = tmp_path / "job.out"
        job = start_batch_script(log, "train_multi_node.sbatch", env, *overrides, on=hosts[0])
        try:
            cut, killed, returned = _cut_off_then_kill_a_worker_host(
                job, log, tmp_path / "run", hosts, env
            )
            status = job.wait(timeout=300)
        finally:
            job.kill()
        # The test's own Ray node, on the host that came back, goes as the host went (its
        # `ray start` may wait on the head the job has stopped).
        killed.stop_all()
        returned.wait(timeout=10)
        assert status == 0, log.read_text()[-5000:]
        output = log.read_text()
        head = f"{hosts[0].address}:{ray_port}"
        assert f"all 3 Ray nodes joined: node1 node2 node3 (head {head})" in output
        _assert_nothing_is_left_on(hosts, tmp_path)

    notices = [line for line in output.splitlines() if "workers failed: " in line]
    assert len(notices) == 2, output[-5000:]
    # Cut off: a collective's timeout (the host gave no answer), or Ray's own detection.
    assert re.search(rf"(no answer from|lost).* \({cut.address}\)", notices[0]), notices[0]
    assert f"({killed.address}): lost (its process or its host died" in notices[1]
    assert all("restarting every worker from the newest checkpoint" in n for n in notices)
    # Distinct lines: a host that comes back starts a log monitor that may print again the
    # lines of the workers that host ran before it went (one "resuming from" seen twice).
    assert len({line for line in output.splitlines() if "resuming from " in line}) == 2
    got, want = losses(tmp_path / "run"), losses(zero3_run / "run")
    assert list(got) == list(want) == [1, 2, 3, 4]  # each step logged once
    np.testing.assert_allclose(list(got.values()), list(want.values()), rtol=1e-6)
    answers = [
        [json.loads(line) for line in (out / "suite_answers.jsonl").read_text().splitlines()]
        for out in (tmp_path / "run", zero3_run / "run")
    ]
    assert len(answers[0]) == len(FAMILIES) and answers[0] == answers[1]
    trained, straight = weights(tmp_path / "run"), weights(zero3_run / "run")
    for name, weight in straight.items():
        torch.testing.assert_close(trained[name], weight, rtol=1e-5, atol=1e-7)


def _worker_host(hosts: list[Host]) -> Host:
    """The host other than the head's that runs a Ray Train worker."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for host in hosts[1:]:
            if host.runs("RayTrainWorker"):
                return host
        time.sleep(0.2)
    raise AssertionError("no Ray Train worker on a host other than the head's")


def _wait_for(done, what: str, job, log: Path, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert job.poll() is None, f"the job ended before {what}: {log.read_text()[-5000:]}"
        assert time.monotonic() < deadline, f"no {what}: {log.read_text()[-5000:]}"
        time.sleep(0.2)


def _checkpointed_since(out: Path, since: float):
    """Whether a checkpoint has been committed at or after the Unix time `since`."""
    return lambda: any(
        (path / COMMIT_MARKER).stat().st_mtime >= since for path in committed(out / "checkpoints")
    )


def _cut_off_then_kill_a_worker_host(job, log: Path, out: Path, hosts, env):
    """The two faults, each once the workers (then) have committed a checkpoint (the
    next step's is under way): returns the host
    cut off, the host killed and the Ray node that the killed host started again."""
    _wait_for(_checkpointed_since(out, 0), "a first checkpoint", job, log)
    cut = _worker_host(hosts)
    cut.link(up=False)
    time.sleep(COLLECTIVE_TIMEOUT_S + 6)
    cut.link(up=True)
    _wait_for(_checkpointed_since(out, time.time()), "a checkpoint after the restart", job, log)
    killed = _worker_host(hosts)
    killed.kill_all()
    time.sleep(2)
    head = f"{hosts[0].address}:{env['RAY_PORT']}"
    returned = subprocess.Popen(
        killed.command(str(Path(sys.executable).parent / "ray"), "start", "--block",
                       "--num-cpus=1", "--disable-usage-stats", f"--address={head}",
                       "--dashboard-agent-listen-port=0"),
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return cut, killed, returned


def _assert_nothing_is_left_on(hosts: list[Host], tmp_path: Path) -> None:
    """Every `srun` step ended and no process at all is left on the hosts (Ray's workers
    notice their raylet has gone within a few seconds)."""
    steps = _step_pids(tmp_path)
    assert steps, "no srun step ran"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        left = [p for p in steps if psutil.pid_exists(p)] + [p for h in hosts for p in h.pids()]
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"left running after the job: {left}"


@pytest.mark.slow
def test_a_node_that_never_joins_fails_the_job_at_the_join_timeout(tmp_path, ray_port):
    env = _multi_node_environment(
        tmp_path,
        ray_port,
        ["node1", "node2", "node3"],
        SRUN_STANDIN_NEVER_STARTS="node3",
        JOIN_TIMEOUT_S="20",
    )
    started = time.monotonic()

    status, output = run_batch_script(
        tmp_path / "job.out", "train_multi_node.sbatch", env, timeout=120
    )

    assert status != 0
    assert time.monotonic() - started < 60
    assert "1 of 3 Ray nodes did not join within JOIN_TIMEOUT_S=20 s: node3" in output
    assert not (tmp_path / "run").exists()  # training never started
    _assert_ray_is_gone(tmp_path, ray_port)


def test_a_gpu_jobs_ray_steps_get_those_flags(tmp_path, ray_port):
    """train_multi_node.sbatch with 8 GPUs a node, as far as its head's step (which never
    starts here: the job ends at its join timeout)."""
    calls = tmp_path / "srun_calls"
    env = _multi_node_environment(
        tmp_path,
        ray_port,
        ["node1", "node2"],
        GPUS_PER_NODE="8",
        SLURM_CPUS_ON_NODE="64",
        SRUN_STANDIN_CALLS=str(calls),
        SRUN_STANDIN_NEVER_STARTS="node1",
        JOIN_TIMEOUT_S="1",
    )

    status, output = run_batch_script(
        tmp_path / "job.out", "train_multi_node.sbatch", env, timeout=60
    )

    assert status != 0 and "did not join" in output, output
    [head] = [shlex.split(line) for line in calls.read_text().splitlines()]
    step = ["--nodes=1", "--ntasks=1", "--cpus-per-task=64", "--gpus-per-node=8"]
    assert head[:7] == [*step, "--gpu-bind=none", "-w", "node1"]
    assert head[7:9] == [str(Path(sys.executable).parent / "ray"), "start"]
    assert {"--num-cpus=64", "--num-gpus=8"} <= set(head[9:])
