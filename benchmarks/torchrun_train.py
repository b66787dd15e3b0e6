"""`framework.train.loop.train` under torchrun instead of Ray Train, for benchmarks/launchers.py.

Two steps, as launch/train.py does them (compose and prepare on the driver, then train):

    python benchmarks/torchrun_train.py --prepare data=alpaca_demo run.output_dir=/tmp/r ...
    torchrun --standalone --nproc_per_node 2 benchmarks/torchrun_train.py /tmp/r

The first composes the Hydra config from the overrides and runs
`framework.commands.prepare.prepare_run` (config.yaml, tokenizer, data artifact); the second runs
one worker per process on the config that the driver resolved (`<run dir>/config.yaml`).
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from framework.commands.compose import compose_train_config  # noqa: E402
from framework.config.schema import TrainConfig  # noqa: E402
from framework.run.files import CONFIG_FILE  # noqa: E402


def prepare(overrides: list[str]) -> None:
    from framework.commands.cli import exit_on_user_error
    from framework.commands.prepare import prepare_run

    with exit_on_user_error():
        prepare_run(compose_train_config(overrides))


def resolved_config(run_dir: Path) -> TrainConfig:
    """The config as the driver resolved and saved it."""
    from framework.config.saved import load_train_config

    return load_train_config(run_dir / CONFIG_FILE)


def worker(run_dir: Path) -> None:
    import torch
    import torch.distributed as dist

    from framework.train.loop import WorkerContext, train

    # As under Ray Train (ray_train._worker_main): DeepSpeed's deprecated-API noise.
    warnings.filterwarnings("ignore", category=FutureWarning, module="torch.distributed")
    cfg = resolved_config(run_dir)
    gpu = torch.cuda.is_available() and cfg.cluster.use_gpu
    dist.init_process_group("nccl" if gpu else "gloo")
    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if gpu else torch.device("cpu")
    # Ray gives each worker OMP_NUM_THREADS = its CPUs; the same here.
    torch.set_num_threads(cfg.cluster.cpus_per_worker)
    ctx = WorkerContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)
    try:
        train(cfg, ctx)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--prepare"]:
        prepare(sys.argv[2:])
    else:
        worker(Path(sys.argv[1]))
