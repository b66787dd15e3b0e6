"""Preprocess the data of a training config and show what it became, without training.

    python launch/prepare.py data=glaive_toolcall              # build the cache, print stats
    python launch/prepare.py data=glaive_toolcall data.inspect=3  # and 3 rendered examples
    python launch/prepare.py data=curate_demo data.curate.show=2  # 2 removals per reason

Takes the same Hydra config and overrides as launch/train.py; the cache it builds is the
one training then reuses.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from framework.commands.cli import exit_on_user_error
from framework.commands.compose import from_hydra, register_schemas
from framework.commands.prepare import prepare_run
from framework.data.stats import format_stats
from framework.run.files import STATS_FILE

register_schemas()


def show_inspected(inspected: list[dict]) -> None:
    for item in inspected:
        print(
            f"\n--- {item['where']} ({item['tokens']} tokens; trained per role: "
            f"{item['trained_per_role']}) trained text in \u27e6 \u27e7 ---"
        )
        print(item["text"])
        for warning in item["warnings"]:
            print(f"WARNING: {warning}")


def show_removed(removed: list[dict]) -> None:
    for item in removed:
        match = f" {item['match']}" if item["match"] else ""
        print(f"\n--- removed ({item['reason']}): {item['source']} {item['where']}")
        print(f"    {item['detail']}{match}")
        print("    " + item["text"].replace("\n", "\n    "))


@hydra.main(config_path="../conf", config_name="train", version_base=None)
def main(raw: DictConfig) -> None:
    with exit_on_user_error():
        cfg = from_hydra(raw)
        prepared = prepare_run(cfg)
    print(format_stats(prepared.stats))
    show_inspected(prepared.inspected)
    show_removed(prepared.removed)
    print(f"\ncache: {prepared.artifact}\nstats: {cfg.run.output_dir}/{STATS_FILE}")


if __name__ == "__main__":
    main()
