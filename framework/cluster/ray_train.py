"""Ray Train: places one worker per data-parallel rank and runs `train.loop.train` in
each. (Only framework/cluster imports Ray.)"""

from __future__ import annotations

import os
import traceback
import warnings
from pathlib import Path

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer, get_device
from ray.train.v2._internal.constants import WORKER_GROUP_START_TIMEOUT_S_ENV_VAR

from framework.cluster.ray_console import (
    TRAIN_LOG_ENV,
    UserError,
    append_to_train_log,
    keep_off_console,
)
from framework.cluster.ray_failures import FailureNotice, startup_timed_out
from framework.config.schema import ClusterConfig, ConfigError, TrainConfig
from framework.data.formats import DataError
from framework.run.files import (
    RAY_DIR,
    TOKENIZER_DIR,
    TRAIN_LOG,
    clear_stop_request,
    stopped_early,
)
from framework.train.stopping import slurm_deadline, stop_on_signals


class RunFailed(RuntimeError):
    """Training failed on a worker; the message carries the worker's error."""


def _worker_main(config: dict) -> None:
    # Imported here, in the workers only: Ray Train's controller loads this module too (to
    # unpickle this function), and DeepSpeed, transformers and peft would cost it about 7 s
    # of CPU and 170 MB.
    from framework.cluster.ray_generation import ActorGenerator
    from framework.train.loop import WorkerContext, train
    from framework.train.step import NonFiniteLoss

    # DeepSpeed calls torch.distributed APIs that torch has deprecated: noise on every step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    cfg: TrainConfig = config["cfg"]
    context = ray.train.get_context()
    ctx = WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=get_device(),
        report=ray.train.report,
        deadline=config["deadline"],
        generator=ActorGenerator(config["generators"], context.get_world_rank())
        if config["generators"]
        else None,
    )
    try:
        train(cfg, ctx)
    except (ConfigError, DataError, NonFiniteLoss) as err:
        append_to_train_log(Path(cfg.run.output_dir) / TRAIN_LOG, traceback.format_exc())
        raise UserError(str(err)) from None


# A private local Ray has one node and no autoscaler to drain it, so Ray Train's preemption
# watcher has nothing to watch; starting it logs an error-level line on the console
# (core_worker.cc: "Actor with class name: 'PreemptionWatcher' ... max_restarts > 0",
# ray-project/ray#53727). On a cluster we join, it stays on.
PRIVATE_RAY_ENV = {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}

# Ray Train's print patch sends each print of a worker to its logger and, as soon as
# anything wraps sys.stdout, to the stream as well: every line of ours showed twice.
NO_PRINT_PATCH = {"RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}

_SETUP_HOOK = f"{keep_off_console.__module__}.{keep_off_console.__name__}"


def connect(cfg: TrainConfig) -> None:
    """Join `cluster.address` (or RAY_ADDRESS), else start a private local Ray, and check
    that the cluster can hold the requested workers."""
    # "local", not None: with None, Ray joins the last cluster `ray start` ran on this
    # machine (/tmp/ray/ray_current_cluster), even one long dead, and hangs there.
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS") or "local"
    if not ray.is_initialized():
        runtime_env = {
            "worker_process_setup_hook": _SETUP_HOOK,
            "env_vars": {
                TRAIN_LOG_ENV: str(Path(cfg.run.output_dir, TRAIN_LOG).resolve()),
                # How long Ray Train's controller waits for room for the workers.
                WORKER_GROUP_START_TIMEOUT_S_ENV_VAR: str(cfg.cluster.node_wait_s),
                **NO_PRINT_PATCH,
            },
        }
        if address == "local":
            runtime_env["env_vars"].update(PRIVATE_RAY_ENV)
        ray.init(address=address, log_to_driver=True, runtime_env=runtime_env)
    # The nodes alive now: an autoscaling cluster is judged by what it has started, not by
    # what it could add (start it with enough nodes for the run).
    nodes = [node["Resources"] for node in ray.nodes() if node["Alive"]]
    check_placement(cfg.cluster, nodes)
    if _uses_generators(cfg):
        check_generator_room(cfg, nodes)


def _uses_generators(cfg: TrainConfig) -> bool:
    return cfg.objective.online and cfg.rollout.generator == "actors"


def worker_resources(cluster: ClusterConfig) -> dict[str, float]:
    """What Ray reserves for each worker (one placement-group bundle)."""
    resources = {"CPU": cluster.cpus_per_worker}
    if cluster.use_gpu:
        resources["GPU"] = cluster.gpus_per_worker
    return resources


# Ray counts resources in ten-thousandths; whole units keep 0.6 / 0.2 from flooring to 2.
_RESOURCE_UNIT = 10_000

# How many workers a placement can hold, from how many fit on each node. pack and spread
# are preferences: any node with room takes workers.
_CAPACITY = {
    "pack": sum,
    "spread": sum,
    "strict_pack": lambda fits: max(fits, default=0),
    "strict_spread": lambda fits: sum(fit > 0 for fit in fits),
}
_NEEDS = {
    "pack": "room for {n} workers across the nodes",
    "spread": "room for {n} workers across the nodes",
    "strict_pack": "one node with room for all {n} workers",
    "strict_spread": "{n} nodes with room for one worker each",
}


def workers_that_fit(node: dict[str, float], resources: dict[str, float]) -> int:
    """How many workers, each needing `resources`, one node's total resources hold."""
    return min(
        round(node.get(name, 0) * _RESOURCE_UNIT) // round(amount * _RESOURCE_UNIT)
        for name, amount in resources.items()
    )


def check_placement(cluster: ClusterConfig, nodes: list[dict[str, float]]) -> None:
    """Raise ConfigError unless nodes with these total resources (Ray's per-node resource
    dicts) can hold cluster.num_workers workers under cluster.placement: Ray would
    otherwise wait, silently, for resources that never come."""
    resources = worker_resources(cluster)
    fits = [workers_that_fit(node, resources) for node in nodes]
    room = _CAPACITY[cluster.placement](fits)
    if room < cluster.num_workers:
        raise ConfigError(_placement_message(cluster, nodes, fits, room))


def check_generator_room(cfg: TrainConfig, nodes: list[dict[str, float]]) -> None:
    """Raise ConfigError unless the cluster's CPUs (and GPUs) hold the workers and the
    generation actors together: Ray would otherwise wait for them, silently."""
    rollout, cluster = cfg.rollout, cfg.cluster
    cpus = cluster.num_workers * cluster.cpus_per_worker + rollout.generators * (
        rollout.cpus_per_generator
    )
    gpus = cluster.num_workers * cluster.gpus_per_worker + rollout.generators
    gpus = gpus if cluster.use_gpu else 0
    have_cpus = sum(node.get("CPU", 0) for node in nodes)
    have_gpus = sum(node.get("GPU", 0) for node in nodes)
    if cpus > have_cpus or gpus > have_gpus:
        raise ConfigError(
            f"cluster.num_workers={cluster.num_workers} workers and rollout.generators="
            f"{rollout.generators} generation actors need {cpus:g} CPUs and {gpus:g} GPUs, "
            f"but the Ray cluster has {have_cpus:g} CPUs and {have_gpus:g} GPUs: lower "
            "rollout.generators, rollout.cpus_per_generator or cluster.num_workers, use "
            "rollout.generator=colocated, or add nodes"
        )


def _placement_message(
    cluster: ClusterConfig, nodes: list[dict[str, float]], fits: list[int], room: int
) -> str:
    n, resources = cluster.num_workers, worker_resources(cluster)
    cpus, gpus = resources["CPU"], resources.get("GPU", 0)
    listing = "; ".join(
        f"node {i}: {node.get('CPU', 0):g} CPUs, {node.get('GPU', 0):g} GPUs (room for {fit})"
        for i, (node, fit) in enumerate(zip(nodes, fits, strict=True))
    )
    no_gpus = gpus and not any(node.get("GPU") for node in nodes)
    return (
        f"cluster.num_workers={n} needs {n * cpus:g} CPUs and {n * gpus:g} GPUs ({cpus:g} CPUs "
        f"and {gpus:g} GPUs per worker; cluster.placement={cluster.placement} needs "
        f"{_NEEDS[cluster.placement].format(n=n)}), but the Ray cluster has room for "
        f"{room} workers that way; its nodes alive now: {listing or 'none'}. Fix: "
        + ("set cluster.use_gpu=false on CPU machines, or " if no_gpus else "")
        + "lower cluster.num_workers, cluster.cpus_per_worker or cluster.gpus_per_worker, "
        "choose another cluster.placement, or add nodes"
    )


def run(cfg: TrainConfig) -> str | None:
    """Train on the Ray cluster. Returns why the run stopped early (checkpointed, to be
    resumed), or None when it finished; raises RunFailed with the worker's error."""
    connect(cfg)
    clear_stop_request(cfg.run.output_dir)
    stop_on_signals(cfg.run.output_dir)
    generators = []
    if _uses_generators(cfg):
        from framework.cluster.ray_generation import start_generators  # transformers: here only

        generators = start_generators(cfg, str(Path(cfg.run.output_dir, TOKENIZER_DIR).resolve()))
    trainer = TorchTrainer(
        _worker_main,
        train_loop_config={"cfg": cfg, "deadline": slurm_deadline(), "generators": generators},
        torch_config=TorchConfig(
            backend="nccl" if cfg.cluster.use_gpu else "gloo",
            timeout_s=cfg.cluster.collective_timeout_s,
        ),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.cluster.num_workers,
            use_gpu=cfg.cluster.use_gpu,
            resources_per_worker=worker_resources(cfg.cluster),
            placement_strategy=cfg.cluster.placement.upper(),
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=os.path.join(cfg.run.output_dir, RAY_DIR),
            # A restart runs the workers again; they resume from the newest checkpoint.
            # Ray's wait for room for them (cluster.node_wait_s) ends the run when it ends,
            # rather than beginning again, forever.
            failure_config=ray.train.FailureConfig(
                max_failures=cfg.cluster.max_failures, controller_failure_limit=0
            ),
            callbacks=[FailureNotice(cfg.cluster)],
        ),
    )
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as err:
        raise RunFailed(_worker_failures(err)) from None
    except ray.train.TrainingFailedError as err:
        if startup_timed_out(err):
            raise RunFailed(_no_room_message(cfg)) from None
        raise RunFailed(f"training failed: {err}") from None
    finally:
        clear_stop_request(cfg.run.output_dir)
        for actor in generators:
            ray.kill(actor)
    # What the workers did, not what was asked: a stop asked for during the last step's
    # evaluation or the export comes too late, and the run finished.
    return stopped_early(cfg.run.output_dir)


def _no_room_message(cfg: TrainConfig) -> str:
    return (
        f"the Ray cluster had no room for cluster.num_workers={cfg.cluster.num_workers} "
        f"workers within cluster.node_wait_s={cfg.cluster.node_wait_s} s (a host was lost "
        "and none took its place); every committed checkpoint is kept: run the same "
        "command again once the cluster has room, and it resumes from the newest"
    )


def _worker_failures(err: ray.train.WorkerGroupError) -> str:
    """One line: a UserError's message (the first rank's: they stop together), else each
    rank's error (the full tracebacks are in the worker logs above)."""
    lines = []
    for rank, failure in sorted(err.worker_failures.items()):
        if isinstance(failure, UserError):
            return str(failure)
        cause = str(failure).strip().splitlines()[-1] if str(failure).strip() else ""
        lines.append(f"rank {rank}: {type(failure).__name__}: {cause}")
    return "training failed on worker " + "; ".join(lines)
