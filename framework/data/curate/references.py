"""The evaluation texts training data is decontaminated against: the suite's validation
and test items, the run's eval records, and the files a user names (every string field
of every record, so any benchmark file works as it is)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from framework.config.schema import CurateConfig, SuiteConfig
from framework.data.curate.decontam import EvalText
from framework.data.curate.text import record_text
from framework.data.formats import DataError, RecordError
from framework.data.readers import read_file
from framework.suite.build import eval_items, user_text
from framework.suite.families import FAMILIES


def suite_texts(suite: SuiteConfig, per_family: int) -> list[EvalText]:
    """The prompts (user turns) and references of every family's first `per_family`
    validation and test items: what launch/eval.py and the in-training eval score."""
    texts = []
    for split in ("validation", "test"):
        for number, item in enumerate(eval_items(list(FAMILIES), split, per_family, suite.seed)):
            label = f"suite {split} {item.family}[{number % per_family}]"
            prompt = user_text(item.prompt)
            texts += [
                EvalText(label, prompt),
                EvalText(f"{label} reference", item.reference, question=False),
            ]
    return texts


def record_texts(records) -> list[EvalText]:
    """Prompt and replies of loaded eval records, labelled by their location."""
    texts = []
    for record in records:
        found = record_text(record.conversation)
        texts += [EvalText(record.where, found.prompt)] if found.prompt else []
        texts += [EvalText(record.where, reply, question=False) for reply in found.replies]
    return texts


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def file_texts(paths: list[str]) -> list[EvalText]:
    texts = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.is_file():
            raise DataError(
                f"data.curate.decontaminate_files: {name}: no such file; name a JSON, JSONL, "
                "Parquet or CSV file of evaluation data"
            )
        for where, record in read_file(path):
            if not isinstance(record, RecordError):
                texts += [EvalText(where, text) for text in _strings(record)]
    return texts


def eval_texts(
    cfg: CurateConfig, suite: SuiteConfig, eval_records, extra_files: list[str]
) -> list[EvalText]:
    return [
        *suite_texts(suite, cfg.suite_items_per_family),
        *record_texts(eval_records),
        *file_texts([*cfg.decontaminate_files, *extra_files]),
    ]
