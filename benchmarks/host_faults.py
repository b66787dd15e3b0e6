"""python benchmarks/host_faults.py [--quick]

How long a run takes to notice a lost host and to train again, fault by fault, on hosts of
their own network (Linux network namespaces of this machine joined by a bridge:
tests/helpers/netns.py, which the multi-node tests use too). A Ray head on node1 (with
the dashboard), a Ray node of 1 CPU on node2 and on node3, and launch/submit.py following
the job from a fourth host, login, as from a login node. The run: the tiny model on
alpaca, 2 workers, ZeRO-2, a checkpoint every 5 steps, restarts without limit. In turn:

1. the host of a worker killed (SIGKILL to all its processes), mid-step; once Ray has
   restarted the workers, the host comes back (its Ray started again);
2. the host of a worker cut off from the network (its link down) for
   cluster.collective_timeout_s + 15 s, then back;
3. the head's host killed: submit.py says so; then a new cluster on the same hosts, the
   command it printed, and the run resumes.

For each: the time from the fault to the run's line saying so (the controller's
"workers failed", or submit.py's "error: the Ray head"), to the first step trained after
it, and the steps trained again (those after the checkpoint resumed from). Root only.

    python benchmarks/host_faults.py           # faults at steps 12, 32 and 52
    python benchmarks/host_faults.py --quick   # the same faults, 2 steps apart

Writes a table to its results page (--out) and stdout; progress goes to stderr.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import common  # first: it puts the repository root on sys.path
from launchers import read_metrics
from multi_host import ray_node, root_plan, wait_for_head

from tests.helpers.netns import Host, namespace_hosts

COLLECTIVE_TIMEOUT_S = 30
DASHBOARD_PORT = 8265
FULL = {"first": 12, "apart": 20, "steps": 200}
QUICK = {"first": 6, "apart": 2, "steps": 60}


class StampedLines:
    """The lines a process writes, each with the time it was read, as they come."""

    def __init__(self, process: subprocess.Popen, log: Path):
        self.lines: list[tuple[float, str]] = []
        self.thread = threading.Thread(target=self._read, args=(process, log), daemon=True)
        self.thread.start()

    def _read(self, process: subprocess.Popen, log: Path) -> None:
        with log.open("a") as out:
            for line in process.stdout:
                self.lines.append((time.time(), line))
                out.write(line)
                out.flush()

    def first(self, text: str, after: float, timeout_s: float = 600) -> float:
        """The time the first line with `text` came after `after`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for stamp, line in list(self.lines):
                if stamp >= after and text in line:
                    return stamp
            time.sleep(0.1)
        raise RuntimeError(f"no line with {text!r} within {timeout_s} s")


def _start_cluster(hosts: list[Host], login: Host, env: dict) -> None:
    """Ray on `hosts` (the head first), its dashboard answering `login`."""
    head, *nodes = hosts
    ray_node(head, env, 1, None, DASHBOARD_PORT)
    wait_for_head(head)
    for node in nodes:
        ray_node(node, env, 1, head)
    probe = f"import socket; socket.create_connection(('{head.address}', {DASHBOARD_PORT}), 1)"
    deadline = time.monotonic() + 120
    while subprocess.run(
        login.command(sys.executable, "-c", probe), capture_output=True
    ).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the dashboard on {head.address} never answered")
        time.sleep(0.5)


def _step_after(run_dir: Path, when: float, timeout_s: float = 600) -> dict:
    """The first step line logged after the Unix time `when`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        later = [m for m in _metrics(run_dir) if m["time"] > when]
        if later:
            return later[0]
        time.sleep(0.2)
    raise RuntimeError(f"no step trained within {timeout_s} s of the fault")


def _metrics(run_dir: Path) -> list[dict]:
    try:
        return read_metrics(run_dir)
    except ValueError:  # a line half written
        return []


def _wait_for_step(run_dir: Path, step: int, follower: subprocess.Popen) -> float:
    deadline = time.monotonic() + 600
    while not any(m["step"] >= step for m in _metrics(run_dir)):
        if follower.poll() is not None or time.monotonic() > deadline:
            time.sleep(1)  # the last lines written
            said = (run_dir.parent / "submit.log").read_text()[-3000:]
            raise RuntimeError(f"the run never reached step {step}; submit.py said:\n{said}")
        time.sleep(0.1)
    return time.time()


def _worker_host(nodes: list[Host]) -> Host:
    return next(node for node in nodes if node.runs("RayTrainWorker"))


def _row(what: str, fault_at: float, said_at: float, step: dict, fault_step: int) -> str:
    again = step["step"] - 1
    lost = fault_step - again
    return (
        f"| {what} | {said_at - fault_at:.1f} | {step['time'] - fault_at:.1f} | "
        f"{lost} (resumed at step {again}) |"
    )


def _follow(login: Host, address: str, overrides: list[str], env: dict, log: Path):
    command = login.command(sys.executable, "launch/submit.py", "--address", address,
                            "--python", sys.executable, "--", *overrides)  # fmt: skip
    follower = subprocess.Popen(
        command, cwd=common.ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    return follower, StampedLines(follower, log)


def _faults(hosts: list[Host], workdir: Path, plan: dict) -> list[str]:
    login, head, *nodes = hosts
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    run_dir, log = workdir / "run", workdir / "submit.log"
    address = f"http://{head.address}:{DASHBOARD_PORT}"
    # Absolute: the job runs in Ray's copy of the repository, beside no shared/.
    alpaca = common.ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"
    overrides = [*common.DATA_OVERRIDES, f"data.sources=[{{path: {alpaca}, format: alpaca}}]",
                 f"run.output_dir={run_dir}",
                 f"run.cache_dir={workdir / 'cache'}", "cluster.num_workers=2",
                 "cluster.max_failures=-1", f"cluster.collective_timeout_s={COLLECTIVE_TIMEOUT_S}",
                 "cluster.node_wait_s=300", f"trainer.max_steps={plan['steps']}",
                 "trainer.log_every=1", "checkpoint.every=5", "eval.every=0",
                 "eval.suite_per_family=0", "run.report=false"]  # fmt: skip
    _start_cluster([head, *nodes], login, env)
    follower, lines = _follow(login, address, overrides, env, log)
    rows, at = [], plan["first"]

    common.progress(f"killing a worker's host at step {at}")
    fault_at = _wait_for_step(run_dir, at, follower)
    killed = _worker_host(nodes)
    killed.kill_all()
    said = lines.first("workers failed: ", fault_at)
    rows.append(_row("a worker's host killed", fault_at, said, _step_after(run_dir, said), at))
    killed.stop_all()
    ray_node(killed, env, 1, head)  # the host comes back

    at += plan["apart"]
    common.progress(f"cutting a worker's host off at step {at}")
    fault_at = _wait_for_step(run_dir, at, follower)
    cut = _worker_host(nodes)
    cut.link(up=False)
    said = lines.first("workers failed: ", fault_at)
    time.sleep(max(0.0, fault_at + COLLECTIVE_TIMEOUT_S + 15 - time.time()))
    cut.link(up=True)
    step = _step_after(run_dir, said)
    rows.append(_row(f"a worker's host cut off ({COLLECTIVE_TIMEOUT_S + 15} s)", fault_at, said,
                     step, at))  # fmt: skip

    at += plan["apart"]
    common.progress(f"killing the head's host at step {at}")
    fault_at = _wait_for_step(run_dir, at, follower)
    head.kill_all()
    said = lines.first("error: the Ray head at ", fault_at)
    follower.wait(timeout=120)
    for node in nodes:
        node.stop_all()
    rerun = re.search(r"resume from the newest with: (.+)", "".join(t for _, t in lines.lines))
    _start_cluster([head, *nodes], login, env)
    resubmitted = time.time()
    command = shlex.split(rerun.group(1))
    follower, lines = _follow(login, address, command[command.index("--") + 1 :], env, log)
    step = _step_after(run_dir, resubmitted)
    rows.append(_row("the head's host killed", fault_at, said, step, at))
    rows.append(
        f"| (the rerun: from submitting to a step trained) | - | "
        f"{step['time'] - resubmitted:.1f} | - |"
    )
    follower.wait(timeout=1200)
    return rows


def main() -> None:
    args, plan = root_plan("host_faults", "faults 2 steps apart", FULL, QUICK)
    with (
        common.bench_workdir("host-faults-") as workdir,
        namespace_hosts(["login", "node1", "node2", "node3"]) as hosts,
    ):
        rows = _faults(hosts, workdir, plan)
    body = common.table_header(
        "fault", "to the run's line about it (s)", "to a step trained (s)", "steps trained again"
    )
    body += rows
    body += [
        "",
        "Times from the fault (the step it came after logged) as this script saw them. "
        f"cluster.collective_timeout_s={COLLECTIVE_TIMEOUT_S}; Ray's own health checks as "
        "they come (a node is marked dead after about 15 s without an answer). The restarts "
        "include starting 2 new workers (Python, torch, DeepSpeed imports; the model built "
        "and the checkpoint loaded) on these 2 cores. A killed host's peers notice at once "
        "(their connections reset); a host cut off sends nothing, and the wait is the "
        "collective's timeout or Ray's, whichever ends first. The head lost: the time for "
        "submit.py to say so; training again then waits for a new cluster and the rerun.",
        f"The hosts: network namespaces of this machine ({socket.gethostname()}) on one "
        "bridge; the model: " + " ".join(common.DATA_OVERRIDES) + ".",
    ]
    common.write_results_page(args.out, "Hosts lost mid-run: noticed, and training again", body)


if __name__ == "__main__":
    main()
