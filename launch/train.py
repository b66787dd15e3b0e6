"""Train: compose the Hydra config, take the run directory's lease, prepare the run
directory, run the Ray Train workers, write the run's report.html.

python launch/train.py                          # the embedded default run
python launch/train.py parallelism=zero3 trainer.max_steps=50 logger=none
"""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from framework.commands.cli import exit_on_user_error
from framework.commands.compose import from_hydra, hyperparameter_line, register_schemas
from framework.commands.prepare import prepare_run
from framework.config.checks import train_config_warnings
from framework.config.schema import TrainConfig
from framework.data.stats import format_stats
from framework.run.files import HF_DIR
from framework.run.lease import RunLease
from framework.train.checkpoint import check_resume
from framework.train.stopping import EXIT_RESUMABLE

register_schemas()


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def main(raw: DictConfig) -> None:
    with exit_on_user_error():
        cfg = from_hydra(raw)
        hydra_cfg = HydraConfig.get()
        print(
            hyperparameter_line(cfg, hydra_cfg.runtime.choices["model"], hydra_cfg.overrides.task)
        )
        if cfg.sized_for_device:
            device = "GPU" if cfg.cluster.use_gpu else "CPU"
            print(f"sized for a {device} (null in the config): {' '.join(cfg.sized_for_device)}")
        for warning in train_config_warnings(cfg):
            print(f"warning: {warning}", file=sys.stderr, flush=True)
        # Before anything is written: a second run on this directory stops here.
        lease = RunLease(cfg.run.output_dir, cfg.run.lease_stale_s).acquire()
    with lease:
        _train(cfg)


def _train(cfg: TrainConfig) -> None:
    with exit_on_user_error():
        prepared = prepare_run(cfg)
        cfg = prepared.cfg  # sized from the data: what the workers train on
        resume_from = check_resume(cfg)
    print(f"data ({prepared.artifact}):\n{format_stats(prepared.stats)}", flush=True)
    print(f"training {cfg.trainer.max_steps} steps of {cfg.layout()}", flush=True)
    if resume_from is not None:
        print(f"resuming from {resume_from}", flush=True)

    from framework.cluster import ray_train  # imported late: Ray and DeepSpeed take seconds to load

    with exit_on_user_error(ray_train.RunFailed):
        try:
            stopped = ray_train.run(cfg)
        finally:  # finished, stopped or failed: the report of what the run got to
            if cfg.run.report:
                from framework.report.page import run_report

                print(run_report(cfg.run.output_dir), flush=True)
    if stopped:
        print(f"stopped early ({stopped}); run the same command to resume", flush=True)
        sys.exit(EXIT_RESUMABLE)
    print(f"done: {cfg.run.output_dir}/{HF_DIR} holds the trained model", flush=True)


if __name__ == "__main__":
    main()
