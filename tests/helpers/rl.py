"""Online RL runs (objective=grpo) for the tests: their prompts and overrides."""

from __future__ import annotations

import json
from pathlib import Path

# Instructions for GRPO runs (grpo_overrides), each with a word budget that random text
# meets in some completions and misses in others.
GRPO_INSTRUCTIONS = [
    "Describe a rainy afternoon in a small town.",
    "Explain how a bicycle stays upright when moving.",
    "Give advice to someone starting to learn the piano.",
    "Write about the smell of fresh bread in the morning.",
    "Summarise why people enjoy walking in forests.",
    "List reasons to keep a paper notebook.",
]


def grpo_overrides(root: Path, model_dir: Path) -> list[str]:
    """Overrides for RUN as objective=grpo on the tiny model at `model_dir` over
    GRPO_INSTRUCTIONS (written to `root`): groups of 4, 8 completions a round, 24 tokens
    each, 2 updates a round, 5 steps, a checkpoint every step."""
    spec = {
        "instruction_id_list": ["length_constraints:number_words"],
        "kwargs": [{"relation": "less than", "num_words": 8}],
    }
    records = [{"instruction": i, "verifier": "ifeval", "spec": spec} for i in GRPO_INSTRUCTIONS]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in records))
    return [
        f"model.name_or_path={model_dir}",
        "objective=grpo",
        f"data.sources=[{{path: {prompts}, format: alpaca}}]",
        "data.max_seq_len=256",
        "rollout.group_size=4",
        "rollout.batch_completions=8",
        "rollout.max_new_tokens=24",
        "objective.updates_per_batch=2",
        "trainer.max_steps=5",
        "trainer.lr=5e-3",
        "checkpoint.every=1",
        "eval.samples=0",
        "eval.suite_per_family=0",
    ]
