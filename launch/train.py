"""Train: compose the Hydra config, prepare the run directory, run the Ray Train workers.

python launch/train.py                          # the embedded default run
python launch/train.py parallelism=zero3 trainer.max_steps=50 logger=none
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from framework.config import ConfigError, from_hydra, register_schemas
from framework.data.formats import DataError
from framework.data.stats import format_stats
from framework.prepare import prepare_run

register_schemas()


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def main(raw: DictConfig) -> None:
    try:
        cfg = from_hydra(raw)
        prepared = prepare_run(cfg)
    except (ConfigError, DataError) as err:
        sys.exit(f"error: {err}")
    print(f"data ({prepared.artifact}):\n{format_stats(prepared.stats)}", flush=True)

    from framework import ray_entry  # imported late: Ray and DeepSpeed take seconds to load

    try:
        ray_entry.run(cfg)
    except (ConfigError, ray_entry.RunFailed) as err:
        sys.exit(f"error: {err}")
    print(f"done: {cfg.run.output_dir}/hf holds the trained model", flush=True)


if __name__ == "__main__":
    main()
