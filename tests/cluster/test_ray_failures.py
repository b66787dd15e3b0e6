"""The console's line when workers fail (framework/cluster/ray_failures.py), on the errors
Ray Train hands its controller: no Ray cluster needed (the real ones, with hosts lost on
their own network, are in tests/test_slurm_multi_node.py)."""

import ray.exceptions

from framework.cluster.ray_failures import failure_line
from framework.config.schema import ClusterConfig

HOSTS = {0: "node1 (10.1.1.1)", 1: "node2 (10.1.1.2)"}
GLOO_TIMEOUT = RuntimeError(
    "[gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 30000ms for recv operation"
)


def test_a_lost_worker_and_its_peer_are_named_with_their_hosts_and_the_restart():
    errors = {
        0: RuntimeError("Read error [10.1.1.2]:37051: Connection reset by peer"),
        1: ray.exceptions.ActorDiedError(),
    }

    line = failure_line(errors, HOSTS, 1, ClusterConfig(max_failures=3))

    assert line == (
        "workers failed: rank 0 on node1 (10.1.1.1): RuntimeError: Read error "
        "[10.1.1.2]:37051: Connection reset by peer; rank 1 on node2 (10.1.1.2): lost (its "
        "process or its host died, or its host left the network). restarting every worker "
        "from the newest checkpoint (restart 1 of 3, cluster.max_failures)"
    )


def test_a_collective_timeout_names_the_host_that_gave_no_answer():
    cluster = ClusterConfig(max_failures=-1, collective_timeout_s=30)

    line = failure_line({0: GLOO_TIMEOUT}, HOSTS, 4, cluster)

    assert line == (
        "workers failed: rank 0 on node1 (10.1.1.1): a collective waited "
        "cluster.collective_timeout_s=30 s for a peer; no answer from rank 1 on node2 "
        "(10.1.1.2). restarting every worker from the newest checkpoint (restart no limit, "
        "cluster.max_failures)"
    )


def test_the_failure_past_max_failures_says_the_run_stops():
    line = failure_line({0: GLOO_TIMEOUT}, HOSTS, 2, ClusterConfig(max_failures=1))

    assert line.endswith("no restart left (cluster.max_failures=1): the run stops")
