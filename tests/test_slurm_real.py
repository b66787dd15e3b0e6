"""The batch scripts of slurm/ on a real one-node Slurm, which slurm/install_local_slurm.sh
installs and starts on this machine: a preempted training job requeues itself and resumes,
a job-array sweep gives each task its own overrides and output directory, and a GPU job's
Ray step (on the node's stand-in GPUs) is accepted and sees every GPU.

The sweep's tasks run a stand-in for Python that records its arguments (the training
itself is what the preemption test runs); everything else is real Slurm. Installing it
needs root and apt-get: without them the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.helpers import ROOT, TINY_RUN, logged

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

INSTALL = ROOT / "slurm" / "install_local_slurm.sh"
MAX_STEPS = 10
TRAINING = [
    f"trainer.max_steps={MAX_STEPS}",
    "checkpoint.every=2",
    "trainer.log_every=1",
    "trainer.warmup_steps=1",
    "data.suite.train_examples=200",
    *TINY_RUN,
]
# Job states after which a job never runs again (a requeued job goes back to PENDING).
ENDED = {
    "BOOT_FAIL",
    "CANCELLED",
    "COMPLETED",
    "DEADLINE",
    "FAILED",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "PREEMPTED",
    "TIMEOUT",
}


def _missing_prerequisite() -> str | None:
    if os.geteuid() != 0:
        return "installing and starting Slurm needs root"
    if shutil.which("apt-get") is None:
        return "installing Slurm needs apt-get (Debian's packages)"
    return None


def _controller_up() -> bool:
    if shutil.which("scontrol") is None:
        return False
    return subprocess.run(["scontrol", "ping"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node Slurm; stopped afterwards unless it was running before."""
    missing = _missing_prerequisite()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"{missing}: under CI=true the Slurm tests must run")
    if missing:
        pytest.skip(missing)
    was_up = _controller_up()
    result = subprocess.run([INSTALL], capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    yield
    if not was_up:
        subprocess.run([INSTALL, "--stop"], check=True, timeout=60)


def job_environment(**variables: str) -> dict[str, str]:
    """The submitter's environment, which sbatch passes on to the job."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", **variables)
    env.pop("RAY_ADDRESS", None)
    return env


@contextmanager
def submitted(script: str, *overrides: str, options: list[str], env: dict) -> Iterator[str]:
    """sbatch from the repository root, on this node's CPUs; yields the job id. On leaving,
    the job is cancelled (if still there) and its logs in slurm/logs/ removed."""
    # The scripts ask for the GPUs and CPUs of a GPU node; this one has neither to give.
    command = ["sbatch", "--parsable", "--gpus-per-node=0", *options, script, *overrides]
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    job = result.stdout.strip().split(";")[0]  # "<id>" or "<id>;<cluster>"
    try:
        yield job
    finally:
        subprocess.run(["scancel", job], capture_output=True)
        for log in job_logs(job):
            log.unlink(missing_ok=True)


def job_records(job: str) -> list[dict[str, str]]:
    """scontrol's record of a job: one per array task."""
    shown = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job], capture_output=True, text=True, check=True
    ).stdout
    return [
        dict(field.partition("=")[::2] for field in line.split()) for line in shown.splitlines()
    ]


def job_logs(job: str) -> list[Path]:
    return [Path(record["StdOut"]) for record in job_records(job)]


def ended(job: str) -> bool:
    return all(record["JobState"] in ENDED for record in job_records(job))


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str, job: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            tails = [log.read_text()[-3000:] for log in job_logs(job) if log.exists()]
            raise AssertionError(f"timed out waiting for {what}; logs:\n" + "\n".join(tails))
        time.sleep(0.5)


def last_step(output_dir: Path) -> int:
    return max((m["step"] for m in logged(output_dir)), default=0)


def test_preempted_training_requeues_itself_and_resumes(slurm_cluster, tmp_path):
    """USR1 to the batch shell, as Slurm sends before a time limit: the driver checkpoints
    and exits 75, the script requeues the job, and the job's second run resumes from the
    checkpoint and finishes: one job, run twice, every step trained once."""
    out = tmp_path / "run"
    env = job_environment(
        OUTPUT_DIR=str(out), GPUS_PER_NODE="0", WORKERS_PER_NODE="2", CPUS_PER_WORKER="1"
    )
    script, options = "slurm/train_single_node.sbatch", [f"--cpus-per-task={os.cpu_count()}"]
    with submitted(script, *TRAINING, options=options, env=env) as job:
        wait_until(lambda: last_step(out) >= 2 or ended(job), 300, "step 2", job)
        [log] = job_logs(job)
        assert not ended(job), log.read_text()[-3000:]
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], check=True)
        wait_until(lambda: ended(job), 300, "the requeued job to finish", job)

        [record], text = job_records(job), log.read_text()
        outcome = (record["JobState"], record["ExitCode"], record["Restarts"])
        assert outcome == ("COMPLETED", "0:0", "1"), text[-3000:]
        assert "requeue" in text and "resuming from" in text  # one log, both runs
        assert [m["step"] for m in logged(out)] == list(range(1, MAX_STEPS + 1))
        assert {"config.json", "model.safetensors"} <= {p.name for p in (out / "hf").iterdir()}


def sweep_entries() -> list[list[str]]:
    """The overrides of each array task: the entries of the bash array SWEEP in the script."""
    script = (ROOT / "slurm" / "sweep.sbatch").read_text()
    block = re.search(r"^SWEEP=\((.*?)^\)", script, re.DOTALL | re.MULTILINE)
    assert block, "slurm/sweep.sbatch defines no SWEEP=( ... ) array"
    return [entry.split() for entry in shlex.split(block[1], comments=True)]


def test_sweep_array_tasks_get_their_own_overrides_and_output_dirs(slurm_cluster, tmp_path):
    """Two array tasks of slurm/sweep.sbatch, each running a stand-in for Python that
    records its arguments: task i gets SWEEP entry i, then the submitted overrides, and
    an OUTPUT_DIR of its own under outputs/ (the stand-in writes nothing there)."""
    stand_in = tmp_path / "python"
    stand_in.write_text(
        f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >{tmp_path}/args-"$SLURM_ARRAY_TASK_ID"\n'
    )
    stand_in.chmod(0o755)
    env = job_environment(PYTHON=str(stand_in), GPUS_PER_NODE="0")
    options = ["--array=0-1", "--cpus-per-task=1"]
    with submitted("slurm/sweep.sbatch", "trainer.seed=7", options=options, env=env) as job:
        wait_until(lambda: ended(job), 120, "both array tasks", job)

        records = sorted(job_records(job), key=lambda record: record["ArrayTaskId"])
        assert [(r["ArrayTaskId"], r["JobState"], r["ExitCode"]) for r in records] == [
            ("0", "COMPLETED", "0:0"),
            ("1", "COMPLETED", "0:0"),
        ]
        for task, entry in enumerate(sweep_entries()[:2]):
            arguments = (tmp_path / f"args-{task}").read_text().splitlines()
            assert arguments[0] == "launch/train.py"
            assert arguments[-len(entry) - 1 :] == [*entry, "trainer.seed=7"]
            assert f"run.output_dir={ROOT}/outputs/sft-sweep-{job}_{task}" in arguments


def test_a_gpu_jobs_ray_step_is_accepted_and_its_task_sees_every_gpu(slurm_cluster, tmp_path):
    """The node has 2 stand-in GPUs (slurm/install_local_slurm.sh). In a job that asks
    --gpus-per-node=2, the step that train_multi_node.sbatch runs a Ray node in, with the
    flags of slurm/common.sh, is accepted and its one task sees both GPUs, as many as
    `ray start` is told. (Debian's Slurm 22.05 here would accept --gres=gpu:2 as well:
    26.05 is the one that refuses it beside the SLURM_GPUS_PER_NODE sbatch exports.)"""
    node = subprocess.run(["scontrol", "show", "node"], capture_output=True, text=True).stdout
    if "Gres=gpu:2" not in node:
        pytest.skip("the local Slurm has no stand-in GPUs: this container may not mknod")
    script, log = tmp_path / "ray_step.sh", tmp_path / "job.out"
    script.write_text(
        "#!/usr/bin/env bash\nset -euo pipefail\n"
        f"GPUS_PER_NODE=2\nsource {ROOT}/slurm/common.sh\n"
        "ray_node_step_flags\nray_node_start_flags\n"
        'echo "${RAY_NODE_START_FLAGS[@]}"\n'
        'srun "${RAY_NODE_STEP_FLAGS[@]}" -w "$(hostname -s)" printenv CUDA_VISIBLE_DEVICES\n'
    )
    options = ["--gpus-per-node=2", "--cpus-per-task=1", f"--output={log}"]
    with submitted(str(script), options=options, env=job_environment()) as job:
        wait_until(lambda: ended(job), 60, "the job", job)

        [record] = job_records(job)
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log.read_text()
        start, visible = log.read_text().splitlines()
        assert start.split()[1] == "--num-gpus=2" and visible == "0,1"
