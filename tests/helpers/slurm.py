"""Batch scripts of slurm/ run without Slurm: the decisions of slurm/common.sh, called with
a node's facts (bash sources the file and runs one function, as a batch script would), and
whole scripts under the stand-in Slurm commands of tests/slurm_standins/."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT
from tests.helpers.netns import Host

SLURM = ROOT / "slurm"
COMMON_SH = SLURM / "common.sh"
STANDINS = ROOT / "tests" / "slurm_standins"
JOB_ID = "4242"


def common_sh(call: str, **variables: str) -> subprocess.CompletedProcess:
    """Runs the bash code `call` after sourcing slurm/common.sh, with `variables` as the
    only environment besides PATH (what the batch scripts set at their top)."""
    env = {"PATH": os.environ["PATH"], **variables}
    return subprocess.run(
        ["bash", "-c", f'set -euo pipefail; source "{COMMON_SH}"; {call}'],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )


def bash_array(function: str, array: str, **variables: str) -> list[str]:
    """The bash array `array` that `function` of slurm/common.sh fills."""
    result = common_sh(f'{function}; printf "%s\\n" "${{{array}[@]}}"', **variables)
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def node_facts(gpus: int, workers: int) -> dict[str, str]:
    """The variables a batch script sets on a node of 64 CPUs and `gpus` GPUs."""
    return dict(
        GPUS_PER_NODE=str(gpus),
        WORKERS_PER_NODE=str(workers),
        CPUS_PER_WORKER=str(64 // workers),
        SLURM_CPUS_ON_NODE="64",
        OUTPUT_DIR="/shared/run",
    )


def standin_job_environment(tmp_path: Path, nodes: list[str], **variables: str) -> dict[str, str]:
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


def start_batch_script(
    log: Path, script: str, env: dict[str, str], *overrides: str, on: Host | None = None
) -> subprocess.Popen:
    """Starts a batch script (`on` a namespace host: as Slurm runs it on the allocation's
    first node), its output going to the file `log`, as under Slurm: a process the job
    left behind would hold a pipe open."""
    command = ["bash", str(SLURM / script), *overrides]
    with log.open("w") as out:
        return subprocess.Popen(
            on.command(*command) if on else command,
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def run_batch_script(
    log: Path,
    script: str,
    env: dict[str, str],
    *overrides: str,
    timeout: int,
    on: Host | None = None,
):
    """Runs a batch script as start_batch_script does; returns its exit status and
    output."""
    job = start_batch_script(log, script, env, *overrides, on=on)
    try:
        status = job.wait(timeout=timeout)
    finally:
        job.kill()
    return status, log.read_text()
