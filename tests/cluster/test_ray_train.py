"""The fail-fast placement check, on hand-made node lists (each node's total resources, as
`ray.nodes()` reports them): no Ray cluster needed."""

import re

import pytest

from framework.cluster.ray_train import check_generator_room, check_placement, worker_resources
from framework.config.schema import ClusterConfig, ConfigError, TrainConfig
from framework.config.sections import RolloutConfig

CPU_NODE = {"CPU": 4.0, "memory": 8e9, "node:__internal_head__": 1.0}
GPU_NODE = {"CPU": 16.0, "GPU": 8.0}


@pytest.mark.parametrize(
    ("cluster", "nodes"),
    [
        (ClusterConfig(num_workers=8, cpus_per_worker=1), [CPU_NODE, CPU_NODE]),
        (ClusterConfig(num_workers=2, cpus_per_worker=2, placement="spread"), [CPU_NODE]),
        (ClusterConfig(num_workers=4, placement="strict_pack"), [CPU_NODE, {"CPU": 1.0}]),
        (ClusterConfig(num_workers=2, placement="strict_spread"), [CPU_NODE, {"CPU": 1.0}]),
        (ClusterConfig(num_workers=16, use_gpu=True, cpus_per_worker=2), [GPU_NODE, GPU_NODE]),
        # Fractions are counted as Ray does, in whole ten-thousandths: 0.6 / 0.2 is 3.
        (ClusterConfig(num_workers=3, use_gpu=True, gpus_per_worker=0.2), [{"CPU": 3, "GPU": 0.6}]),
        # Without use_gpu, GPUs are neither needed nor counted.
        (ClusterConfig(num_workers=2, gpus_per_worker=4.0), [{"CPU": 2.0}]),
    ],
)
def test_fits(cluster, nodes):
    check_placement(cluster, nodes)


@pytest.mark.parametrize(
    ("cluster", "nodes", "needs", "room"),
    [
        # 5 CPUs in all, but whole workers of 2 CPUs: 2 + 0.
        (
            ClusterConfig(num_workers=3, cpus_per_worker=2),
            [CPU_NODE, {"CPU": 1.0}],
            "room for 3 workers across the nodes",
            "room for 2 workers",
        ),
        (
            ClusterConfig(num_workers=5, placement="spread"),
            [CPU_NODE],
            "room for 5 workers across the nodes",
            "room for 4 workers",
        ),
        # Enough CPUs in all, but not on one node.
        (
            ClusterConfig(num_workers=6, placement="strict_pack"),
            [CPU_NODE, CPU_NODE],
            "one node with room for all 6 workers",
            "room for 4 workers",
        ),
        # Room for eight, but only on two nodes.
        (
            ClusterConfig(num_workers=3, placement="strict_spread"),
            [CPU_NODE, CPU_NODE],
            "3 nodes with room for one worker each",
            "room for 2 workers",
        ),
        # CPUs for 8 workers per node, GPUs for 4.
        (
            ClusterConfig(num_workers=9, use_gpu=True, cpus_per_worker=2, gpus_per_worker=2.0),
            [GPU_NODE, GPU_NODE],
            "room for 9 workers across the nodes",
            "room for 8 workers",
        ),
    ],
)
def test_does_not_fit_and_says_what_was_asked_what_is_there_and_the_fix(
    cluster, nodes, needs, room
):
    with pytest.raises(ConfigError) as err:
        check_placement(cluster, nodes)
    message = str(err.value)
    resources = worker_resources(cluster)
    assert message.startswith(
        f"cluster.num_workers={cluster.num_workers} needs "
        f"{cluster.num_workers * resources['CPU']:g} CPUs and "
        f"{cluster.num_workers * resources.get('GPU', 0):g} GPUs"
    )
    assert f"cluster.placement={cluster.placement} needs {needs}" in message
    assert f"{room} that way" in message
    assert f"node 0: {nodes[0]['CPU']:g} CPUs, {nodes[0].get('GPU', 0):g} GPUs" in message
    assert f"node {len(nodes) - 1}:" in message
    for key in ("cluster.cpus_per_worker", "cluster.gpus_per_worker", "add nodes"):
        assert key in message
    assert "cluster.use_gpu=false" not in message


def test_gpus_asked_of_a_cpu_cluster_suggests_cpu_workers():
    with pytest.raises(ConfigError, match=re.escape("set cluster.use_gpu=false on CPU machines")):
        check_placement(ClusterConfig(num_workers=1, use_gpu=True), [CPU_NODE])


def test_no_nodes_alive_is_said():
    with pytest.raises(ConfigError, match="nodes alive now: none"):
        check_placement(ClusterConfig(num_workers=1), [])


def test_the_workers_ask_ray_for_what_the_check_counted():
    assert worker_resources(ClusterConfig(cpus_per_worker=3)) == {"CPU": 3}
    gpu = ClusterConfig(use_gpu=True, cpus_per_worker=4, gpus_per_worker=2.0)
    assert worker_resources(gpu) == {"CPU": 4, "GPU": 2.0}


def test_generation_actors_are_counted_with_the_workers():
    """rollout.generator=actors: the workers and the actors together must fit."""
    cfg = TrainConfig(
        cluster=ClusterConfig(num_workers=2, use_gpu=True, gpus_per_worker=1.0),
        rollout=RolloutConfig(generator="actors", generators=2, cpus_per_generator=1),
    )
    check_generator_room(cfg, [{"CPU": 4.0, "GPU": 4.0}])
    with pytest.raises(
        ConfigError,
        match=r"need 4 CPUs and 4 GPUs, but the Ray cluster has "
        r"4 CPUs and 3 GPUs: lower rollout.generators",
    ):
        check_generator_room(cfg, [{"CPU": 4.0, "GPU": 3.0}])
