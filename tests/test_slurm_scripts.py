"""The batch scripts of slurm/, run here: shellcheck; what a GPU job asks of srun and Ray;
a two-node Ray run that trains as one node does; the join timeout; preemption and requeue;
a sweep task's overrides.

This machine has no multi-node Slurm, so the Slurm commands are stand-ins
(tests/slurm_standins/, first on PATH): `srun` runs its step's command on this machine,
`scontrol` lists the node names of SLURM_JOB_NODELIST and records `requeue` calls, and the
SLURM_* variables are set by hand. Every "node" is this machine (NODE_IP=127.0.0.1, which
Ray itself replaces with the machine's own address). Ray, launch/train.py and DeepSpeed are
real, except in the preemption and sweep tests, where fake_train.sh stands in for the
training driver: they check the scripts' signal handling and arguments, not the training
(tests/test_slurm_real.py runs them on a real Slurm).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
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

from framework.suite.families import FAMILIES
from tests.helpers import ROOT, RUN, ZERO3_RUN, losses
from tests.helpers.slurm import bash_array, common_sh, node_facts

SLURM = ROOT / "slurm"
STANDINS = ROOT / "tests" / "slurm_standins"
JOB_ID = "4242"


def _shell_scripts(folder: Path) -> list[Path]:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    return [p for p in files if p.read_bytes().startswith(b"#!/usr/bin/env bash")]


def test_shell_scripts_pass_shellcheck():
    scripts = _shell_scripts(SLURM)
    ours = {"common.sh", "train_single_node.sbatch", "train_multi_node.sbatch", "sweep.sbatch"}
    assert ours <= {p.name for p in scripts}
    shellcheck = Path(sys.executable).parent / "shellcheck"
    result = subprocess.run(
        [shellcheck, "--external-sources", *scripts, *_shell_scripts(STANDINS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout


# --- What a GPU node's job asks of Slurm and Ray (the decisions of slurm/common.sh) ------


@pytest.mark.parametrize("workers", [8, 4])
def test_a_gpu_nodes_ray_step_asks_for_its_gpus_as_the_allocation_does(workers):
    """sbatch --gpus-per-node=8 exports SLURM_GPUS_PER_NODE=8, which srun reads as
    --gpus-per-node: a step adding --gres=gpu:8 is refused by Slurm >= 26.05. The step asks
    --gpus-per-node, its one task sees all 8, and Ray counts those 8."""
    facts = node_facts(8, workers)

    step = bash_array("ray_node_step_flags", "RAY_NODE_STEP_FLAGS", **facts)
    start = bash_array("ray_node_start_flags", "RAY_NODE_START_FLAGS", **facts)
    overrides = bash_array("cluster_overrides 16", "CLUSTER_OVERRIDES", **facts)

    assert step == [
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=64",
        "--gpus-per-node=8",
        "--gpu-bind=none",
    ]
    assert start == ["--num-cpus=64", "--num-gpus=8"]
    assert overrides == [
        "cluster.num_workers=16",
        f"cluster.cpus_per_worker={64 // workers}",
        "run.output_dir=/shared/run",
        "cluster.use_gpu=true",
        f"cluster.gpus_per_worker={8 // workers}",
    ]


def test_a_cpu_nodes_ray_step_asks_for_no_gpus_and_ray_counts_none():
    facts = node_facts(0, 1)

    step = bash_array("ray_node_step_flags", "RAY_NODE_STEP_FLAGS", **facts)
    start = bash_array("ray_node_start_flags", "RAY_NODE_START_FLAGS", **facts)
    overrides = bash_array("cluster_overrides 2", "CLUSTER_OVERRIDES", **facts)

    assert step == ["--nodes=1", "--ntasks=1", "--cpus-per-task=64"]
    assert start == ["--num-cpus=64", "--num-gpus=0"]
    assert overrides[-1] == "cluster.use_gpu=false"
    assert not any("gpus_per_worker" in o for o in overrides)


def test_workers_that_do_not_divide_the_gpus_get_whole_gpus_and_are_told_of_idle_ones():
    result = common_sh(
        'cluster_overrides 3; printf "%s\\n" "${CLUSTER_OVERRIDES[@]}"', **node_facts(8, 3)
    )

    assert result.returncode == 0, result.stderr
    assert "cluster.gpus_per_worker=2" in result.stdout.splitlines()
    assert "leave 2 of the node's 8 GPUs idle" in result.stderr


def test_more_workers_than_gpus_fail_with_the_remedy():
    result = common_sh("cluster_overrides 9", **node_facts(8, 9))

    assert result.returncode == 1
    assert "WORKERS_PER_NODE=9 is more than GPUS_PER_NODE=8" in result.stderr
    assert "lower WORKERS_PER_NODE" in result.stderr


def _job_environment(tmp_path: Path, nodes: list[str], **variables: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("RAY_ADDRESS", None)
    env.update(
        PATH=f"{STANDINS}{os.pathsep}{env['PATH']}",
        PYTHONUNBUFFERED="1",
        SLURM_JOB_ID=JOB_ID,
        SLURM_JOB_NAME="sft-test",
        SLURM_JOB_NUM_NODES=str(len(nodes)),
        SLURM_JOB_NODELIST=",".join(nodes),
        SLURM_SUBMIT_DIR=str(ROOT),
        SLURM_CPUS_ON_NODE="1",
        SCONTROL_STANDIN_REQUEUED=str(tmp_path / "requeued"),
        GPUS_PER_NODE="0",
        PYTHON=sys.executable,
        OUTPUT_DIR=str(tmp_path / "run"),
    )
    env.update(variables)
    return env


def _run_job(log: Path, script: str, env: dict[str, str], *overrides: str, timeout: int):
    """Runs a batch script; returns its exit status and output. The output goes to the file
    `log`, as under Slurm: a process the job left behind would hold a pipe open."""
    with log.open("w") as out:
        status = subprocess.run(
            ["bash", SLURM / script, *overrides],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=timeout,
        ).returncode
    return status, log.read_text()


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
    return _job_environment(
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


@pytest.mark.slow
def test_two_nodes_train_as_one_node_and_leave_no_ray(tmp_path, ray_port, zero3_run):
    """ZeRO-3 on two Ray nodes of 1 CPU each, so one worker per node; the losses and the
    suite's answers equal those of the same run on 2 gloo ranks in one process group
    without Ray (the session's zero3_run)."""
    env = _multi_node_environment(tmp_path, ray_port, ["node1", "node2"])
    overrides = [*RUN, *ZERO3_RUN, f"run.cache_dir={zero3_run / 'cache'}"]

    status, output = _run_job(
        tmp_path / "job.out", "train_multi_node.sbatch", env, *overrides, timeout=240
    )

    assert status == 0, output[-5000:]
    assert "all 2 Ray nodes joined: node1 node2" in output
    assert (tmp_path / "run" / "hf" / "model.safetensors").exists()
    _assert_ray_is_gone(tmp_path, ray_port)

    got, want = losses(tmp_path / "run"), losses(zero3_run / "run")
    assert sorted(got) == sorted(want) == [1, 2, 3, 4]
    np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-6)
    answers = [
        [json.loads(line) for line in (out / "suite_answers.jsonl").read_text().splitlines()]
        for out in (tmp_path / "run", zero3_run / "run")
    ]
    assert len(answers[0]) == len(FAMILIES) and answers[0] == answers[1]


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

    status, output = _run_job(tmp_path / "job.out", "train_multi_node.sbatch", env, timeout=120)

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

    status, output = _run_job(tmp_path / "job.out", "train_multi_node.sbatch", env, timeout=60)

    assert status != 0 and "did not join" in output, output
    [head] = [shlex.split(line) for line in calls.read_text().splitlines()]
    step = ["--nodes=1", "--ntasks=1", "--cpus-per-task=64", "--gpus-per-node=8"]
    assert head[:7] == [*step, "--gpu-bind=none", "-w", "node1"]
    assert head[7:9] == [str(Path(sys.executable).parent / "ray"), "start"]
    assert {"--num-cpus=64", "--num-gpus=8"} <= set(head[9:])


# --- Preemption and sweeps, with a stand-in driver ----------------------------------------


def _fake_driver_environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    return _job_environment(
        tmp_path,
        ["node1"],
        PYTHON=str(STANDINS / "fake_train.sh"),
        FAKE_TRAIN_DIR=str(tmp_path),
        SLURM_CPUS_ON_NODE="4",
        **variables,
    )


def _driver_arguments(tmp_path: Path) -> list[str]:
    return (tmp_path / "args").read_text().splitlines()


@pytest.mark.parametrize("warning", [signal.SIGUSR1, signal.SIGTERM], ids=lambda s: s.name)
def test_a_signalled_job_passes_the_signal_on_and_requeues_itself(tmp_path, warning):
    job = subprocess.Popen(
        ["bash", SLURM / "train_single_node.sbatch", "trainer.max_steps=9"],
        cwd=ROOT,
        env=_fake_driver_environment(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "args").exists():
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()[0]
        time.sleep(0.05)

    job.send_signal(warning)
    output = job.communicate(timeout=30)[0]

    assert job.returncode == 0, output
    assert (tmp_path / "signals").read_text() == f"{warning.name.removeprefix('SIG')}\n"
    assert (tmp_path / "requeued").read_text() == f"{JOB_ID}\n"
    assert "requeueing job" in output
    assert _driver_arguments(tmp_path) == [
        "launch/train.py",
        "cluster.num_workers=1",
        "cluster.cpus_per_worker=4",
        f"run.output_dir={tmp_path / 'run'}",
        "cluster.use_gpu=false",
        "trainer.max_steps=9",
    ]


def test_a_failed_run_is_the_jobs_exit_status_and_is_not_requeued(tmp_path):
    env = _fake_driver_environment(tmp_path, FAKE_TRAIN_EXIT="3")

    status, output = _run_job(tmp_path / "job.out", "train_single_node.sbatch", env, timeout=30)

    assert status == 3, output
    assert not (tmp_path / "requeued").exists()


def _sweep_entries() -> list[list[str]]:
    """The SWEEP array of slurm/sweep.sbatch: one list of overrides per entry."""
    text = (SLURM / "sweep.sbatch").read_text()
    block = re.search(r"^SWEEP=\(\n(.*?)^\)", text, re.MULTILINE | re.DOTALL)
    assert block, "no SWEEP=( ... ) block in slurm/sweep.sbatch"
    return [shlex.split(line)[0].split() for line in block.group(1).splitlines()]


def test_a_sweep_task_trains_with_its_entry_into_its_own_directory(tmp_path):
    entry = _sweep_entries()[1]
    env = _fake_driver_environment(
        tmp_path, SLURM_ARRAY_JOB_ID="4240", SLURM_ARRAY_TASK_ID="1", FAKE_TRAIN_EXIT="0"
    )
    del env["OUTPUT_DIR"]  # the default: one directory per array task

    status, output = _run_job(tmp_path / "job.out", "sweep.sbatch", env, "logger=none", timeout=30)

    assert status == 0, output
    arguments = _driver_arguments(tmp_path)
    assert arguments[-len(entry) - 1 :] == [*entry, "logger=none"]
    output_dirs = [a for a in arguments if a.startswith("run.output_dir=")]
    assert output_dirs == [f"run.output_dir={ROOT}/outputs/sft-test-4240_1"]
