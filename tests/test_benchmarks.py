"""The benchmark scripts: shellcheck, and the prepared GPU check on a machine without a GPU."""

import os
import subprocess
import sys
from pathlib import Path

from tests.helpers import ROOT


def test_the_gpu_check_stops_at_once_with_one_line_without_a_gpu(tmp_path):
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\necho 'No devices were found'\nexit 6\n")
    (tmp_path / "nvidia-smi").chmod(0o755)
    env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
    result = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert result.returncode == 1 and result.stdout == ""
    assert (
        result.stderr
        == "benchmarks/gpu_check.sh needs an NVIDIA GPU (nvidia-smi finds none here)\n"
    )


def test_the_benchmark_scripts_pass_shellcheck():
    shellcheck = Path(sys.executable).parent / "shellcheck"
    scripts = sorted(str(p) for p in (ROOT / "benchmarks").glob("*.sh"))
    result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True)
    assert len(scripts) >= 3 and result.returncode == 0, result.stdout
