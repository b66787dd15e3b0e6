"""python benchmarks/multi_host.py [--quick]

What crossing hosts costs: the same run (the tiny model on alpaca, ZeRO-2, 2 workers of
1 CPU each, every step logged) with both workers on one host, and with one worker on each
of two hosts of their own network (Linux network namespaces of this machine joined by a
bridge: tests/helpers/netns.py, which the multi-node tests use too). Each layout is a Ray
cluster started inside the namespaces (a head; on two hosts, a worker node on the other),
with the driver on the head's host, in interleaved rounds: the workers, their CPUs and the
launcher are the same, only the ranks' link differs (one host's loopback, or the veth and
bridge between two). Root only.

    python benchmarks/multi_host.py           # 3 rounds of 30 steps per layout
    python benchmarks/multi_host.py --quick   # 1 round of 8 steps

Writes a table (layout: median step time, tokens/s, against one host) to its results page
(--out) and stdout; progress goes to stderr.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import common  # first: it puts the repository root on sys.path
from launchers import read_metrics

from tests.helpers.netns import Host, namespace_hosts, refused

FULL = {"steps": 30, "skip": 5, "rounds": 3}
QUICK = {"steps": 8, "skip": 2, "rounds": 1}
ONE_HOST, TWO_HOSTS = "one host (2 workers)", "two hosts (1 worker each)"
RAY_PORT = 6379  # each host has its own ports: nothing else listens in the namespaces
RAY = str(Path(sys.executable).parent / "ray")


def ray_node(
    host: Host, env: dict, cpus: int, head: Host | None, dashboard_port: int | None = None
) -> subprocess.Popen:
    """`ray start --block` on `host`: the head (head None; with a dashboard on all its
    addresses at `dashboard_port`, if given), or a node joining `head`."""
    dashboard = (
        ["--dashboard-host=0.0.0.0", f"--dashboard-port={dashboard_port}"]
        if dashboard_port
        else ["--include-dashboard=false"]
    )
    role = (
        ["--head", f"--port={RAY_PORT}", *dashboard]
        if head is None
        else [f"--address={head.address}:{RAY_PORT}"]
    )
    command = [RAY, "start", "--block", "--disable-usage-stats", f"--num-cpus={cpus}",
               f"--node-ip-address={host.address}", *role]  # fmt: skip
    return subprocess.Popen(
        host.command(*command), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def wait_for_head(head: Host, timeout_s: float = 60) -> None:
    probe = f"import socket; socket.create_connection(('{head.address}', {RAY_PORT}), 1)"
    deadline = time.monotonic() + timeout_s
    while subprocess.run(head.command(sys.executable, "-c", probe), capture_output=True).returncode:
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray's head on {head.address} never listened")
        time.sleep(0.5)


def one_run(hosts: list[Host], layout: str, run_dir: Path, cache: Path, steps: int) -> None:
    """A Ray cluster for `layout`, the run on it from the head's host, everything stopped."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    env.pop("RAY_ADDRESS", None)
    head, other = hosts
    try:
        ray_node(head, env, 2 if layout == ONE_HOST else 1, None)
        wait_for_head(head)
        if layout == TWO_HOSTS:
            ray_node(other, env, 1, head)
        overrides = [*common.DATA_OVERRIDES, f"run.output_dir={run_dir}",
                     f"run.cache_dir={cache}", f"cluster.address={head.address}:{RAY_PORT}",
                     "cluster.num_workers=2", "cluster.placement=spread",
                     f"trainer.max_steps={steps}", "trainer.log_every=1", "eval.every=0",
                     "eval.suite_per_family=0", "run.report=false"]  # fmt: skip
        log = run_dir.with_suffix(".log")
        with log.open("w") as out:
            command = head.command(sys.executable, "launch/train.py", *overrides)
            result = subprocess.run(command, cwd=common.ROOT, env=env, stdout=out, stderr=out)
        if result.returncode:
            tail = "\n".join(log.read_text().splitlines()[-15:])
            raise RuntimeError(f"{layout}: the run exited {result.returncode}:\n{tail}")
    finally:
        for host in hosts:
            host.stop_all()


def root_plan(page: str, quick: str, full_plan: dict, quick_plan: dict) -> tuple:
    """A namespace benchmark's arguments (its docstring, its results `page`) and plan; it
    stops at once with why where namespaces are refused."""
    caller = sys.modules["__main__"].__doc__
    args = common.arg_parser(caller, page, quick=quick).parse_args()
    if why := refused():
        sys.exit(f"error: {why}")
    return args, quick_plan if args.quick else full_plan


def main() -> None:
    args, plan = root_plan("multi_host", "1 round of 8 steps", FULL, QUICK)
    rows: dict[str, list[dict]] = {ONE_HOST: [], TWO_HOSTS: []}
    with (
        common.bench_workdir("multi-host-") as workdir,
        namespace_hosts(["node1", "node2"]) as hosts,
    ):
        for round_ in range(plan["rounds"]):
            for layout in rows:
                run_dir = workdir / f"{'one' if layout == ONE_HOST else 'two'}-{round_}"
                common.progress(f"round {round_ + 1}: {layout}")
                one_run(hosts, layout, run_dir, workdir / "cache", plan["steps"])
                steps = [m for m in read_metrics(run_dir) if m["step"] > plan["skip"]]
                medians = {
                    key: common.median(steps, key) for key in ("step_time_s", "tokens_per_s")
                }
                rows[layout].append(medians)
    one = common.median(rows[ONE_HOST], "step_time_s")
    body = common.table_header("layout", "median step time (s)", "tokens/s", "against one host")
    for layout, measured in rows.items():
        step = common.median(measured, "step_time_s")
        body.append(
            f"| {layout} | {step:.3f} | {common.median(measured, 'tokens_per_s'):,.0f} | "
            f"{step / one:.2f}x |"
        )
    body += [
        "",
        f"Medians over steps after {plan['skip']} of {plan['steps']}, then over "
        f"{plan['rounds']} round(s) per layout, interleaved. The model: "
        f"{' '.join(common.DATA_OVERRIDES)}; ZeRO-2 (the default): the gradients are "
        "reduce-scattered over gloo every step.",
        f"The hosts: network namespaces of this machine ({socket.gethostname()}) on one "
        "bridge; the link is a veth pair through the kernel, not a wire: what it costs here "
        "is the TCP stack's, a lower bound for a real network.",
    ]
    common.write_results_page(args.out, "Crossing hosts: one host against two", body)


if __name__ == "__main__":
    main()
