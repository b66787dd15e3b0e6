"""The batch scripts of slurm/ on a real Slurm: a preempted training job on two hosts
requeues itself and resumes, a job-array sweep gives each task its own overrides and output
directory, and a GPU job's Ray step (on the node's stand-in GPUs) is accepted and sees every
GPU.

slurm/install_local_slurm.sh installs Debian's Slurm and starts a one-node cluster on this
machine (the sweep and GPU tests run on it). The preemption test makes a cluster of its own
from that one's configuration: two hosts of their own network (tests/helpers/netns.py),
each running a `slurmd`, the first the `slurmctld` as well. The sweep's tasks run a
stand-in for Python that records its arguments (the training itself is what the preemption
test runs); everything else is real Slurm. Installing it needs root and apt-get: without
them the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest

from tests.helpers import ROOT, TINY_RUN, logged
from tests.helpers.netns import Host, namespace_hosts, refused

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

INSTALL = ROOT / "slurm" / "install_local_slurm.sh"
LOCAL_CONF = Path("/etc/slurm/slurm.conf")  # the one-node cluster's, which INSTALL writes
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


@dataclass(frozen=True)
class Slurm:
    """A running Slurm, whose commands run `on` a host of it (None: this machine) with
    `env` (the submitter's environment, which sbatch passes on to the job)."""

    env: dict[str, str]
    on: Host | None = None

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        command = self.on.command(*argv) if self.on else list(argv)
        result = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True)
        assert result.returncode == 0 or not check, f"{' '.join(argv)}: {result.stderr}"
        return result

    def job_environment(self, **variables: str) -> dict[str, str]:
        return dict(self.env, **variables)

    @contextmanager
    def submitted(self, script: str, *overrides: str, options: list[str], env: dict):
        """sbatch from the repository root, on the nodes' CPUs; yields the job id. On
        leaving, the job is cancelled (if still there) and its logs in slurm/logs/ removed."""
        # The scripts ask for the GPUs and CPUs of a GPU node; these have neither to give.
        command = ["sbatch", "--parsable", "--gpus-per-node=0", *options, script, *overrides]
        job = Slurm(env, self.on).run(*command).stdout.strip().split(";")[0]  # "<id>[;<cluster>]"
        try:
            yield job
        finally:
            self.run("scancel", job, check=False)
            for log in self.logs(job):
                log.unlink(missing_ok=True)

    def records(self, job: str) -> list[dict[str, str]]:
        """scontrol's record of a job: one per array task."""
        shown = self.run("scontrol", "show", "job", "--oneliner", job).stdout
        return [dict(f.partition("=")[::2] for f in line.split()) for line in shown.splitlines()]

    def logs(self, job: str) -> list[Path]:
        return [Path(record["StdOut"]) for record in self.records(job)]

    def ended(self, job: str) -> bool:
        return all(record["JobState"] in ENDED for record in self.records(job))

    def wait_until(self, condition: Callable[[], bool], timeout_s: float, what: str, job: str):
        deadline = time.monotonic() + timeout_s
        while not condition():
            if time.monotonic() > deadline:
                tails = [log.read_text()[-3000:] for log in self.logs(job) if log.exists()]
                raise AssertionError(f"timed out waiting for {what}; logs:\n" + "\n".join(tails))
            time.sleep(0.5)


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
    """A running one-node Slurm; stopped by the last test process done with it, unless it
    was running before the tests."""
    missing = _missing_prerequisite()
    if missing and os.environ.get("CI") == "true":
        pytest.fail(f"{missing}: under CI=true the Slurm tests must run")
    if missing:
        pytest.skip(missing)
    with _users() as users:
        if not users["pids"]:
            users["started"] = not _controller_up()
        result = subprocess.run([INSTALL], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        users["pids"].append(os.getpid())
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("RAY_ADDRESS", None)
    yield Slurm(env)
    with _users() as users:
        users["pids"] = [p for p in users["pids"] if p != os.getpid() and psutil.pid_exists(p)]
        if not users["pids"] and users.get("started"):
            subprocess.run([INSTALL, "--stop"], check=True, timeout=60)


# The test processes using the one-node Slurm now, and whether they started it: pytest's
# workers may run this module's tests at once, and the last one done stops what the first
# started (a cluster running before the tests is left running).
USERS = Path("/run/instruct-framework-slurm-tests.json")


@contextmanager
def _users() -> Iterator[dict]:
    """USERS read and written back, under a lock no other test process passes meanwhile."""
    with open(USERS.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        users = json.loads(USERS.read_text()) if USERS.exists() else {"pids": []}
        yield users
        USERS.write_text(json.dumps(users))


# Keys of the one-node configuration that a cluster on namespace hosts sets for itself: its
# controller, nodes and partition, the daemons' files, and no stand-in GPUs. The rest (the
# plugins, the credentials' lifetime, scheduling and requeueing) is the same cluster's.
OWN_KEYS = {
    "SlurmctldHost",
    "StateSaveLocation",
    "SlurmdSpoolDir",
    "SlurmctldPidFile",
    "SlurmdPidFile",
    "SlurmctldLogFile",
    "SlurmdLogFile",
    "GresTypes",
    "NodeName",
    "PartitionName",
}
# `ip netns exec` gives a host a sysfs of its own, without the machine's cgroup file
# systems, and slurmd 22.05 will not start without cgroup v1's named systemd hierarchy
# (although these clusters track processes without cgroups: proctrack/linuxproc).
CGROUP_MOUNT = (
    "mount -t tmpfs cgroup /sys/fs/cgroup && mkdir /sys/fs/cgroup/systemd && "
    "mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd"
)


def _hosts_conf(hosts: list[Host], directory: Path) -> str:
    """slurm.conf of a cluster whose nodes are `hosts`, the first one's slurmctld its
    controller, its files under `directory`."""
    kept = [
        line
        for line in LOCAL_CONF.read_text().splitlines()
        if line and not line.startswith("#") and line.partition("=")[0] not in OWN_KEYS
    ]
    # slurmctld checks that it runs on the controller's host name: namespaces share it.
    controller = socket.gethostname().split(".")[0]
    return "\n".join([
        *kept,
        f"SlurmctldHost={controller}({hosts[0].address})",
        f"StateSaveLocation={directory}/state",
        f"SlurmdSpoolDir={directory}/%n",
        f"SlurmctldPidFile={directory}/slurmctld.pid",
        f"SlurmdPidFile={directory}/%n/slurmd.pid",
        f"SlurmctldLogFile={directory}/slurmctld.log",
        f"SlurmdLogFile={directory}/%n/slurmd.log",
        *(f"NodeName={h.name} NodeAddr={h.address} CPUs={os.cpu_count()}" for h in hosts),
        f"PartitionName=hosts Nodes={','.join(h.name for h in hosts)} Default=YES State=UP",
    ]) + "\n"  # fmt: skip


@contextmanager
def _slurm_daemons(hosts: list[Host]) -> Iterator[Slurm]:
    """A slurmd on each host (named as the host), slurmctld on the first; yields the
    cluster once every node is idle, and stops the daemons on leaving."""
    directory = hosts[0].tmp / "slurm"  # removed with the hosts
    for path in [directory / "state", *(directory / h.name for h in hosts)]:
        path.mkdir(parents=True)
    shutil.chown(directory, "slurm", "slurm")  # slurmctld runs as SlurmUser
    shutil.chown(directory / "state", "slurm", "slurm")
    (directory / "slurm.conf").write_text(_hosts_conf(hosts, directory))
    slurm = Slurm(dict(os.environ, SLURM_CONF=str(directory / "slurm.conf")), hosts[0])
    daemons = [subprocess.Popen(hosts[0].command("slurmctld", "-D"), env=slurm.env)]
    for host in hosts:
        slurmd = f"{CGROUP_MOUNT} && exec slurmd -D -N {host.name}"
        daemons.append(subprocess.Popen(host.command("sh", "-c", slurmd), env=slurm.env))
    try:
        _wait_until_idle(slurm, len(hosts), directory)
        yield slurm
    finally:
        for daemon in daemons:
            daemon.terminate()
        for daemon in daemons:
            try:
                daemon.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()


def _wait_until_idle(slurm: Slurm, nodes: int, directory: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = slurm.run("sinfo", "--noheader", "--Node", "--format=%T", check=False).stdout
        if states.split() == ["idle"] * nodes:
            return
        time.sleep(0.5)
    logs = sorted(directory.glob("**/*.log"))
    raise AssertionError(
        f"the nodes are not idle after 60 s (sinfo: {states.split()}):\n"
        + "\n".join(f"{log}:\n{log.read_text()[-2000:]}" for log in logs)
    )


@pytest.fixture
def slurm_on_two_hosts(slurm_cluster):
    """A Slurm of two nodes on two hosts of their own network, made from slurm_cluster's
    configuration (which also installed Slurm and started munged, whose socket the hosts
    share)."""
    if why := refused():
        pytest.skip(why)
    with namespace_hosts(["node1", "node2"]) as hosts, _slurm_daemons(hosts) as slurm:
        yield slurm


def last_step(output_dir: Path) -> int:
    return max((m["step"] for m in logged(output_dir)), default=0)


def test_preempted_training_on_two_hosts_requeues_itself_and_resumes(slurm_on_two_hosts, tmp_path):
    """train_multi_node.sbatch on two hosts, a worker on each. USR1 to the batch shell, as
    Slurm sends before a time limit: the driver checkpoints and exits 75, the script
    requeues the job, and the job's second run (its Ray started again on both hosts)
    resumes from the checkpoint and finishes: one job, run twice, every step trained once."""
    slurm, out = slurm_on_two_hosts, tmp_path / "run"
    # A CPU a node: each Ray node has room for one worker.
    env = slurm.job_environment(
        OUTPUT_DIR=str(out), GPUS_PER_NODE="0", WORKERS_PER_NODE="1", CPUS_PER_WORKER="1"
    )
    script, options = "slurm/train_multi_node.sbatch", ["--cpus-per-task=1"]
    with slurm.submitted(script, *TRAINING, options=options, env=env) as job:
        slurm.wait_until(lambda: last_step(out) >= 2 or slurm.ended(job), 300, "step 2", job)
        [log] = slurm.logs(job)
        assert not slurm.ended(job), log.read_text()[-3000:]
        slurm.run("scancel", "--signal=USR1", "--batch", job)
        slurm.wait_until(lambda: slurm.ended(job), 300, "the requeued job to finish", job)

        [record], text = slurm.records(job), log.read_text()
        outcome = (record["JobState"], record["ExitCode"], record["Restarts"])
        assert outcome == ("COMPLETED", "0:0", "1"), text[-3000:]
        joined = f"all 2 Ray nodes joined: node1 node2 (head {slurm.on.address}:"
        assert text.count(joined) == 2, text[-3000:]  # the head's address on its network
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
    slurm = slurm_cluster
    """Two array tasks of slurm/sweep.sbatch, each running a stand-in for Python that
    records its arguments: task i gets SWEEP entry i, then the submitted overrides, and
    an OUTPUT_DIR of its own under outputs/ (the stand-in writes nothing there)."""
    stand_in = tmp_path / "python"
    stand_in.write_text(
        f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" >{tmp_path}/args-"$SLURM_ARRAY_TASK_ID"\n'
    )
    stand_in.chmod(0o755)
    env = slurm.job_environment(PYTHON=str(stand_in), GPUS_PER_NODE="0")
    options = ["--array=0-1", "--cpus-per-task=1"]
    with slurm.submitted("slurm/sweep.sbatch", "trainer.seed=7", options=options, env=env) as job:
        slurm.wait_until(lambda: slurm.ended(job), 120, "both array tasks", job)

        records = sorted(slurm.records(job), key=lambda record: record["ArrayTaskId"])
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
    slurm = slurm_cluster
    node = slurm.run("scontrol", "show", "node").stdout
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
    with slurm.submitted(str(script), options=options, env=slurm.env) as job:
        slurm.wait_until(lambda: slurm.ended(job), 60, "the job", job)

        [record] = slurm.records(job)
        assert (record["JobState"], record["ExitCode"]) == ("COMPLETED", "0:0"), log.read_text()
        start, visible = log.read_text().splitlines()
        assert start.split()[1] == "--num-gpus=2" and visible == "0,1"
