"""Where improve's sampling tasks run (framework/cluster/ray_sampling.py): a GPU each, or
an equal share of one, where the cluster has GPUs; the CPU otherwise."""

from __future__ import annotations

import pytest

from framework.cluster.ray_sampling import task_placement


def test_without_gpus_tasks_stay_on_the_cpu():
    # Ray leaves CUDA_VISIBLE_DEVICES alone for a task that reserves no GPU: one that
    # asked for "cuda" would take the node's first GPU, unreserved, like every other task.
    assert task_placement(workers=2, cpus_per_worker=3, cluster_gpus=0) == (
        {"num_cpus": 3, "num_gpus": 0},
        "cpu",
    )


@pytest.mark.parametrize(
    ("workers", "gpus", "share"), [(2, 4, 1), (4, 4, 1), (4, 2, 0.5), (3, 2, 0.5), (5, 2, 1 / 3)]
)
def test_with_gpus_every_task_reserves_its_own_gpu_or_an_equal_share(workers, gpus, share):
    options, device = task_placement(workers=workers, cpus_per_worker=1, cluster_gpus=gpus)
    # Reserved, Ray narrows CUDA_VISIBLE_DEVICES to the task's GPU: "cuda" is that GPU.
    assert device == "cuda"
    assert options == {"num_cpus": 1, "num_gpus": pytest.approx(share)}
    assert workers * share <= gpus + 1e-9  # every task runs at once
