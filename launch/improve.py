"""Improve a model round after round from its own answers, checked by the suite's checkers
(framework/commands/improve.py): sample on Ray workers, pair right over wrong answers, train one
preference round, score, repeat. Prints the per-round table, writes rounds.jsonl and logs
the rounds to wandb.

    python launch/improve.py model=outputs/smollm2-sft/hf
    python launch/improve.py model=outputs/smollm2-sft/hf rounds=3 out=outputs/improve-3
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import hydra
from omegaconf import DictConfig

from framework.commands.cli import exit_on_user_error
from framework.commands.compose import improve_config, register_schemas
from framework.commands.improve import ROUNDS_FILE, format_rounds, run_rounds
from framework.tracking.tracker import log_rounds

register_schemas()


@hydra.main(config_path="conf", config_name="improve", version_base=None)
def main(raw: DictConfig) -> None:
    with exit_on_user_error():
        cfg = improve_config(raw)
    from framework.cluster.ray_sampling import sample_answers  # Ray takes seconds to load

    def sample(model: str, chats: list) -> list[list[str]]:
        return sample_answers(
            model, chats, workers=cfg.workers, cpus_per_worker=cfg.cpus_per_worker,
            address=cfg.address, cache_dir=cfg.cache_dir, seed=cfg.seed, samples=cfg.samples,
            temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=cfg.max_new_tokens,
            batch_size=32,
        )  # fmt: skip

    with exit_on_user_error():
        rows = run_rounds(cfg, sample)
    log_rounds(cfg.logger, Path(cfg.out), dataclasses.asdict(cfg), rows)
    print(f"{format_rounds(rows)}\ndone: {Path(cfg.out) / ROUNDS_FILE}", flush=True)


if __name__ == "__main__":
    main()
