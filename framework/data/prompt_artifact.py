"""A prompts artifact (objective=grpo): the prepared RL prompts of a run's data config,
stored once under run.cache_dir/datasets/prompts-<fingerprint>/ as prompts_train.jsonl,
prompts_eval.jsonl and stats.json (PromptSet.counts, `kind: prompts`), beside the
identity.json every artifact has."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from framework.data.prompts import PromptSet, write_prompts
from framework.run.files import write_json

KIND = "prompts"


def prompts_file(artifact: str | Path, split: str) -> Path:
    """Where the artifact keeps the prompts of `split` (train or eval)."""
    return Path(artifact) / f"prompts_{split}.jsonl"


def write_prompt_artifact(artifact: Path, prompts: PromptSet) -> None:
    """The artifact written whole or not at all (staged, then renamed into place)."""
    staging = artifact.with_name(artifact.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    write_prompts(prompts_file(staging, "train"), prompts.train)
    write_prompts(prompts_file(staging, "eval"), prompts.eval)
    write_json(staging / "stats.json", {"kind": KIND, **prompts.counts})
    os.replace(staging, artifact)


def format_prompt_stats(stats: dict) -> str:
    """A human-readable summary of a prompts artifact's stats for the console and logs."""
    lines = [f"{'source':<28}{'records':>9}{'skipped':>9}{'decontaminated':>16}{'kept':>9}"]
    for name, s in stats["sources"].items():
        skipped = sum(s["skipped"].values())
        lines.append(
            f"{name[:27]:<28}{s['records']:>9}{skipped:>9}{s['decontaminated']:>16}{s['kept']:>9}"
        )
        lines += [f"    skipped {reason}: {n}" for reason, n in sorted(s["skipped"].items())]
    for first in stats["decontaminated_first"]:
        lines.append(f"    decontaminated: {first['where']}")
    verifiers = ", ".join(f"{name} {n}" for name, n in sorted(stats["verifiers"].items()))
    constraints = stats["constraints"]
    lines.append(
        f"{stats['train']} training prompts, {stats['eval']} held out; verifiers: {verifiers}; "
        f"{constraints['attached']} constraints attached"
    )
    return "\n".join(lines)
