"""The decisions of slurm/common.sh, called with a node's facts: bash sources the file and
runs one function, as a batch script would, with nothing of Slurm but the variables."""

from __future__ import annotations

import os
import subprocess

from tests.helpers import ROOT

COMMON_SH = ROOT / "slurm" / "common.sh"


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
