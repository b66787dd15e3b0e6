"""Records from files -> chat messages, with the file and line of every bad record.

Supported now: JSONL or a JSON list, each record either `messages`
([{role, content}], roles system/user/assistant) or alpaca (`instruction`, optional
`input`, `output`, optional `system`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A record cannot be used; the message names file, line and reason."""


def read_records(path: str) -> Iterator[tuple[str, dict]]:
    """Yield (location, record) where location is `file:line` (JSONL) or `file[index]`."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
        for index, record in enumerate(records):
            yield f"{path}[{index}]", record
        return
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{line_no}", json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{line_no}: invalid JSON ({err.msg})") from None


def to_messages(record: dict, where: str) -> list[dict]:
    """Convert one record into checked chat messages, or raise DataError naming `where`."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    if "messages" in record:
        messages = record["messages"]
    elif "instruction" in record and "output" in record:
        messages = _alpaca_messages(record)
    else:
        raise DataError(
            f"{where}: unknown record format (keys {sorted(record)}); expected `messages` "
            "or alpaca `instruction`/`output`"
        )
    _check_messages(messages, where)
    return messages


def _alpaca_messages(record: dict) -> list[dict]:
    prompt = record["instruction"]
    if record.get("input"):
        prompt = f"{prompt}\n\n{record['input']}"
    messages = [{"role": "system", "content": record["system"]}] if record.get("system") else []
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": record["output"]})
    return messages


def _check_messages(messages: object, where: str) -> None:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: `messages` must be a non-empty list")
    for index, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ROLES:
            raise DataError(f"{where}: message {index} has role {role!r}; expected one of {ROLES}")
        content = message.get("content")
        if not isinstance(content, str) or not content.strip():
            raise DataError(f"{where}: message {index} ({role}) has empty or non-string content")
    if not any(m["role"] == "assistant" for m in messages):
        raise DataError(f"{where}: no assistant message, nothing to train on")
