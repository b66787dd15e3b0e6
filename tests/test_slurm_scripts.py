"""The batch scripts of slurm/, run here: shellcheck; what a GPU job asks of srun and Ray;
preemption and requeue; a sweep task's overrides. (Jobs on several nodes:
tests/test_slurm_multi_node.py.)

This machine has no multi-node Slurm, so the Slurm commands are stand-ins
(tests/slurm_standins/, first on PATH): `srun` runs its step's command on this machine,
`scontrol` lists the node names of SLURM_JOB_NODELIST and records `requeue` calls, and the
SLURM_* variables are set by hand. fake_train.sh stands in for the training driver: these
tests check the scripts' signal handling and arguments, not the training
(tests/test_slurm_real.py runs them on a real Slurm).
"""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import ROOT
from tests.helpers.slurm import (
    JOB_ID,
    SLURM,
    STANDINS,
    bash_array,
    common_sh,
    node_facts,
    run_batch_script,
    standin_job_environment,
)


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


# --- Preemption and sweeps, with a stand-in driver ----------------------------------------


def _fake_driver_environment(tmp_path: Path, **variables: str) -> dict[str, str]:
    return standin_job_environment(
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

    status, output = run_batch_script(
        tmp_path / "job.out", "train_single_node.sbatch", env, timeout=30
    )

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

    status, output = run_batch_script(
        tmp_path / "job.out", "sweep.sbatch", env, "logger=none", timeout=30
    )

    assert status == 0, output
    arguments = _driver_arguments(tmp_path)
    assert arguments[-len(entry) - 1 :] == [*entry, "logger=none"]
    output_dirs = [a for a in arguments if a.startswith("run.output_dir=")]
    assert output_dirs == [f"run.output_dir={ROOT}/outputs/sft-test-4240_1"]
