"""What a run says when Ray Train's workers fail: one console line a failure, naming each
failed rank's host and what follows (a restart from the newest checkpoint, or the end),
from Ray Train's controller; Ray's own account, tracebacks and all, goes to train.log
(ray_console.py)."""

from __future__ import annotations

import ray.exceptions
from ray.train.v2._internal.exceptions import (
    WorkerGroupStartupTimeoutError,
    WorkerHealthCheckFailedError,
)
from ray.train.v2._internal.execution.callback import WorkerGroupCallback

from framework.cluster.ray_console import UserError
from framework.config.schema import ClusterConfig

# A worker that stopped answering Ray: its process died, or its host died or left the
# network (Ray marks a node dead after its health checks fail for about 15 s).
_LOST = (
    WorkerHealthCheckFailedError,
    ray.exceptions.ActorDiedError,
    ray.exceptions.ActorUnavailableError,
)
# How gloo (the waiting rank; its peers, whose pair it closed) and NCCL's watchdog say a
# collective waited cluster.collective_timeout_s.
_COLLECTIVE_TIMEOUTS = (
    "Timed out waiting",
    "Application timeout caused pair closure",
    "Watchdog caught collective operation timeout",
)


def describe(error: BaseException, collective_timeout_s: int) -> str:
    """What happened to one worker, in a few words."""
    if isinstance(error, _LOST):
        return "lost (its process or its host died, or its host left the network)"
    text = str(error).strip()
    if any(mark in text for mark in _COLLECTIVE_TIMEOUTS):
        return (
            f"a collective waited cluster.collective_timeout_s={collective_timeout_s} s for a peer"
        )
    last = text.splitlines()[-1] if text else ""
    return f"{type(error).__name__}: {last[:300]}"


class FailureNotice(WorkerGroupCallback):
    """On Ray Train's controller: after a failed poll of the workers, one line on the
    console naming each failed rank and its host, the ranks that gave no answer (a host
    cut off from the network cannot), and what the failure policy does next."""

    def __init__(self, cluster: ClusterConfig):
        self.cluster = cluster
        self.failures = 0
        self.hosts: dict[int, str] = {}
        self.told = False

    def after_worker_group_start(self, worker_group) -> None:
        self.hosts = {
            worker.distributed_context.world_rank: host_of(worker.metadata)
            for worker in worker_group.get_workers()
        }
        self.told = False

    def after_worker_group_poll_status(self, worker_group_status) -> None:
        errors = worker_group_status.errors
        if self.told or not errors or all(isinstance(e, UserError) for e in errors.values()):
            return  # a UserError's one line is the driver's
        self.told = True
        self.failures += 1
        print(failure_line(errors, self.hosts, self.failures, self.cluster), flush=True)


def host_of(metadata) -> str:
    return f"{metadata.hostname} ({metadata.node_ip})"


def failure_line(
    errors: dict[int, BaseException], hosts: dict[int, str], failures: int, cluster: ClusterConfig
) -> str:
    """`errors` by rank; `hosts` every rank's host; the `failures`-th failure of the run."""
    failed = [
        f"rank {rank} on {hosts.get(rank, 'an unknown host')}: "
        + describe(error, cluster.collective_timeout_s)
        for rank, error in sorted(errors.items())
    ]
    silent = [
        f"rank {rank} on {host}" for rank, host in sorted(hosts.items()) if rank not in errors
    ]
    if silent:
        failed.append("no answer from " + ", ".join(silent))
    limit = cluster.max_failures
    if limit == -1 or failures <= limit:
        count = "no limit" if limit == -1 else f"{failures} of {limit}"
        then = (
            "restarting every worker from the newest checkpoint "
            f"(restart {count}, cluster.max_failures)"
        )
    else:
        then = f"no restart left (cluster.max_failures={limit}): the run stops"
    return f"workers failed: {'; '.join(failed)}. {then}"


def startup_timed_out(error: BaseException) -> bool:
    """Whether Ray Train stopped because its wait for room for the workers ended."""
    return isinstance(getattr(error, "controller_failure", None), WorkerGroupStartupTimeoutError)
