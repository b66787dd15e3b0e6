"""Ray Train: places one worker per data-parallel rank and runs `loop.train` in each.
The only module that imports Ray."""

from __future__ import annotations

import os
import warnings

import ray
import ray.train
from ray.train.torch import TorchConfig, TorchTrainer, get_device

from framework.config import ConfigError, TrainConfig
from framework.loop import WorkerContext, train
from framework.stopping import clear_stop_request, slurm_deadline, stop_on_signals


class RunFailed(RuntimeError):
    """Training failed on a worker; the message carries the worker's error."""


def _worker_main(config: dict) -> None:
    # DeepSpeed calls torch.distributed APIs that torch has deprecated: noise on every step.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    context = ray.train.get_context()
    ctx = WorkerContext(
        rank=context.get_world_rank(),
        world_size=context.get_world_size(),
        device=get_device(),
        report=ray.train.report,
        deadline=config["deadline"],
    )
    train(config["cfg"], ctx)


def connect(cfg: TrainConfig) -> None:
    """Join `cluster.address` (or RAY_ADDRESS), else start a private local Ray, and check
    that the cluster can hold the requested workers."""
    address = cfg.cluster.address or os.environ.get("RAY_ADDRESS")
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=True)
    total = ray.cluster_resources()
    cpus = cfg.cluster.num_workers * cfg.cluster.cpus_per_worker
    gpus = cfg.cluster.num_workers if cfg.cluster.use_gpu else 0
    if total.get("CPU", 0) < cpus or total.get("GPU", 0) < gpus:
        raise ConfigError(
            f"cluster.num_workers={cfg.cluster.num_workers} needs {cpus} CPUs and {gpus} GPUs "
            f"but the Ray cluster has {total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} "
            "GPUs; lower cluster.num_workers or cluster.cpus_per_worker, set "
            "cluster.use_gpu=false on CPU machines, or add nodes"
        )


def run(cfg: TrainConfig) -> str | None:
    """Train on the Ray cluster. Returns why the run stopped early (checkpointed, to be
    resumed), or None when it finished; raises RunFailed with the worker's error."""
    connect(cfg)
    clear_stop_request(cfg.run.output_dir)
    stop_on_signals(cfg.run.output_dir)
    trainer = TorchTrainer(
        _worker_main,
        train_loop_config={"cfg": cfg, "deadline": slurm_deadline()},
        torch_config=TorchConfig(backend="nccl" if cfg.cluster.use_gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.cluster.num_workers,
            use_gpu=cfg.cluster.use_gpu,
            resources_per_worker={"CPU": cfg.cluster.cpus_per_worker},
        ),
        run_config=ray.train.RunConfig(
            name=cfg.run.name,
            storage_path=os.path.join(cfg.run.output_dir, "ray"),
            # A restart runs the workers again; they resume from the newest checkpoint.
            failure_config=ray.train.FailureConfig(max_failures=cfg.cluster.max_failures),
        ),
    )
    try:
        trainer.fit()
    except ray.train.WorkerGroupError as err:
        raise RunFailed(_worker_failures(err)) from None
    except ray.train.TrainingFailedError as err:
        raise RunFailed(f"training failed: {err}") from None
    finally:
        stopped = clear_stop_request(cfg.run.output_dir)
    return stopped


def _worker_failures(err: ray.train.WorkerGroupError) -> str:
    # The full tracebacks are already in the worker logs above; the last word is the cause.
    lines = []
    for rank, failure in sorted(err.worker_failures.items()):
        cause = str(failure).strip().splitlines()[-1] if str(failure).strip() else ""
        lines.append(f"rank {rank}: {type(failure).__name__}: {cause}")
    return "training failed on worker " + "; ".join(lines)
