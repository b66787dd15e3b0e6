"""Where conversations come from: the configured file, or the built-in demo set."""

from __future__ import annotations

from collections.abc import Iterator

from framework.config import DataConfig
from framework.data.demo import demo_conversations
from framework.data.formats import read_records, to_messages


def conversations(cfg: DataConfig, seed: int) -> Iterator[tuple[str, list[dict]]]:
    """Yield (location, messages); location names the file and line for error messages."""
    if cfg.path is None:
        for index, record in enumerate(demo_conversations(cfg.demo_examples, seed)):
            yield f"demo[{index}]", record["messages"]
        return
    for where, record in read_records(cfg.path):
        yield where, to_messages(record, where)
