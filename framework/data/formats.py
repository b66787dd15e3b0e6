"""Records -> conversations: format detection, column and role mapping, validation.

A record is one JSON object (or table row). `to_conversation` renames its columns, picks
its format (alpaca, sharegpt, messages, prompt_completion, text), maps its roles to
system/user/assistant/tool and checks the result. Every problem is a `RecordError` that
carries the record's location, a reason code from `REASONS` (what skip mode counts) and a
message that says what is wrong and how to fix it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass

from framework.config.schema import SourceConfig

REASONS = (
    "invalid_json",
    "unknown_format",
    "missing_field",
    "unknown_role",
    "turn_order",
    "empty_content",
    "non_string_content",
    "bad_weight",
    "empty_reply",
    "template_mismatch",
    "no_target",
    "same_replies",
    # RL prompts (prompts.py): how a reply to the prompt is rewarded
    "no_verifier",
    "unknown_verifier",
    "bad_spec",
)

# The data's role name -> ours, per format; a source's `roles:` extends and overrides these.
SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    # A tool call is the assistant's output (trained); an observation is the tool's result.
    "function_call": "assistant",
    "observation": "tool",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
}
MESSAGES_ROLES = {
    "system": "system",
    "user": "user",
    "assistant": "assistant",
    "tool": "tool",
    "function": "tool",
}
# Which role may come next after each role (system is only ever first, then user).
_NEXT = {"user": ("assistant",), "assistant": ("user", "tool"), "tool": ("tool", "assistant")}
_ROLE_FIX = "map it with `roles: {{{name}: user}}` (or assistant/system/tool) in the source config"


class DataError(ValueError):
    """Any data problem; the message names the problem and the fix."""


class RecordError(DataError):
    """One record cannot be used: str(err) is `where: detail`; `reason` is one of REASONS."""

    def __init__(self, where: str, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"unknown reason {reason!r}; expected one of {REASONS}")
        super().__init__(f"{where}: {detail}")
        self.where, self.reason, self.detail = where, reason, detail

    def __reduce__(self):
        # Rebuild from the three fields, so the error survives pickling (Ray, multiprocessing).
        return type(self), (self.where, self.reason, self.detail)


@dataclass
class Conversation:
    # {"role": system|user|assistant|tool, "content": str, optional "weight": float}
    messages: list[dict]
    tools: list[dict] | None = None
    # The `text` format: no chat template, every token trained (messages is empty).
    text: str | None = None


class ErrorPolicy:
    """What happens to a bad record: "raise" stops at once, "skip" counts it per reason."""

    def __init__(self, on_error: str):
        if on_error not in ("raise", "skip"):
            raise ValueError(f"on_error={on_error!r} is not one of ['raise', 'skip']")
        self.on_error = on_error
        self.skipped: dict[str, dict[str, int]] = {}
        self.first: dict[str, str] = {}  # reason -> the first such error's message

    def __call__(self, err: RecordError, source_name: str) -> None:
        if self.on_error == "raise":
            raise err
        self.count(err, source_name)

    def count(self, err: RecordError, source_name: str) -> None:
        """Count `err` as skipped whatever on_error says: for examples the config itself
        leaves nothing to train, which are not bad records."""
        counts = self.skipped.setdefault(source_name, {})
        counts[err.reason] = counts.get(err.reason, 0) + 1
        self.first.setdefault(err.reason, str(err))

    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.skipped.values())


def to_conversation(record: dict, where: str, source: SourceConfig) -> Conversation:
    """Convert one record as `source` describes it. The result is either a `text`
    conversation with non-empty text, or messages with string, non-empty contents in a
    valid turn order that ends with an assistant reply. Raises RecordError otherwise."""
    if not isinstance(record, dict):
        raise RecordError(
            where,
            "unknown_format",
            f"a record must be a JSON object, got {type(record).__name__}",
        )
    record = rename_columns(record, source.columns)
    kind = _detect(record, where) if source.format == "auto" else source.format
    if kind not in _CONVERTERS:
        raise RecordError(
            where,
            "unknown_format",
            f"unknown format {kind!r}; use one of {sorted(_CONVERTERS)} or auto",
        )
    conversation = _CONVERTERS[kind](record, where, source.roles)
    if conversation.text is None:
        check_turns(conversation.messages, where)
    return conversation


def rename_columns(record: dict, columns: dict[str, str]) -> dict:
    """The record under our field names; null values count as absent (table rows carry
    nulls for columns a row does not have)."""
    theirs = set(columns.values())
    renamed = {k: v for k, v in record.items() if k not in theirs and v is not None}
    for ours, column in columns.items():
        if record.get(column) is not None:
            renamed[ours] = record[column]
    return renamed


def _detect(record: dict, where: str) -> str:
    if "conversations" in record:
        return "sharegpt"
    if "messages" in record:
        items = record["messages"]
        first = items[0] if isinstance(items, list) and items else None
        return "sharegpt" if isinstance(first, dict) and "from" in first else "messages"
    for key, kind in (("instruction", "alpaca"), ("prompt", "prompt_completion"), ("text", "text")):
        if key in record:
            return kind
    raise RecordError(
        where,
        "unknown_format",
        f"cannot tell the format from the keys {sorted(record)}; expected alpaca "
        "(instruction, output), sharegpt (conversations), messages (messages), "
        "prompt_completion (prompt, completion) or text (text). Rename columns with "
        "`columns: {ours: theirs}` in the source config, or set `format:`",
    )


def _field(record: dict, name: str, where: str, kind: str):
    if name not in record:
        raise RecordError(
            where,
            "missing_field",
            f"{kind} record has no `{name}` (keys {sorted(record)}); if the data calls it "
            f"differently, map it with `columns: {{{name}: <column>}}` in the source config",
        )
    return record[name]


def _string(value, where: str, what: str) -> str:
    if not isinstance(value, str):
        raise RecordError(
            where, "non_string_content", f"{what} must be a string, got {type(value).__name__}"
        )
    return value


def _list(value, where: str, what: str) -> list:
    if not isinstance(value, list):
        raise RecordError(
            where, "unknown_format", f"`{what}` must be a list of turns, got {type(value).__name__}"
        )
    return value


def parse_message(item, where: str, index: int, keys: tuple[str, str], roles: dict) -> dict:
    """One turn -> {"role", "content"(, "weight")}, with the role mapped through `roles`."""
    role_key, content_key = keys
    if not isinstance(item, dict):
        raise RecordError(
            where,
            "unknown_format",
            f"message {index} must be an object with `{role_key}` and `{content_key}`, "
            f"got {type(item).__name__}",
        )
    if role_key not in item:
        raise RecordError(
            where,
            "missing_field",
            f"message {index} has no `{role_key}` (keys {sorted(item)}); sharegpt turns use "
            "from/value and messages use role/content: set `format:` to match the data",
        )
    name = item[role_key]
    if not isinstance(name, str) or name not in roles:
        raise RecordError(
            where,
            "unknown_role",
            f"message {index} has role {name!r}, not one of {sorted(roles)}; "
            + _ROLE_FIX.format(name=name),
        )
    role, content = roles[name], item.get(content_key)
    if role == "assistant" and not content and item.get("tool_calls"):
        content = json.dumps(item["tool_calls"], ensure_ascii=False)
    if content is None:
        raise RecordError(where, "empty_content", f"message {index} ({name}) has no content")
    message = {"role": role, "content": _string(content, where, f"message {index} content")}
    if item.get("weight") is not None:
        message["weight"] = _weight(item["weight"], where, index)
    return message


def _weight(value, where: str, index: int) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value < 0:
        raise RecordError(
            where,
            "bad_weight",
            f"message {index} has weight {value!r}; a loss weight is a number >= 0 "
            "(0 = not trained, 1 = trained)",
        )
    return float(value)


def parse_tools(value, where: str) -> list[dict] | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as err:
            raise RecordError(
                where,
                "invalid_json",
                f"`tools` is not valid JSON ({err.msg} at character {err.pos}); give a list "
                "of tool schemas, as a list or as a JSON string",
            ) from None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(tool, dict) for tool in value):
        raise RecordError(
            where,
            "invalid_json",
            f"`tools` must be a list of tool schema objects, got {value!r:.80}",
        )
    return value or None


def _alpaca(record: dict, where: str, roles: dict) -> Conversation:
    instruction = _string(_field(record, "instruction", where, "alpaca"), where, "`instruction`")
    output = _string(_field(record, "output", where, "alpaca"), where, "`output`")
    extra = _string(record.get("input", ""), where, "`input`")
    messages = system_messages(record, where)
    for index, pair in enumerate(_list(record.get("history", []), where, "history")):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RecordError(
                where, "turn_order", f"`history` item {index} must be a [user, assistant] pair"
            )
        messages.append({"role": "user", "content": _string(pair[0], where, "`history`")})
        messages.append({"role": "assistant", "content": _string(pair[1], where, "`history`")})
    prompt = "\n\n".join(part for part in (instruction, extra) if part.strip())
    messages.append({"role": "user", "content": prompt})
    messages.append({"role": "assistant", "content": output})
    return Conversation(messages)


def system_messages(record: dict, where: str) -> list[dict]:
    """The record-level `system` prompt as a message list; an empty prompt means none."""
    system = _string(record.get("system", ""), where, "`system`")
    return [{"role": "system", "content": system}] if system.strip() else []


def _sharegpt(record: dict, where: str, roles: dict) -> Conversation:
    roles = {**SHAREGPT_ROLES, **roles}
    key = "conversations" if "conversations" in record else "messages"
    turns = _list(_field(record, key, where, "sharegpt"), where, key)
    if "chosen" in record:  # a preference pair: train on the chosen reply, ignore the rejected
        chosen = record["chosen"]
        turns = [*turns, {"from": "gpt", "value": chosen} if isinstance(chosen, str) else chosen]
    messages = system_messages(record, where)
    for index, turn in enumerate(turns):
        keys = ("role", "content") if isinstance(turn, dict) and "from" not in turn else None
        messages.append(parse_message(turn, where, index, keys or ("from", "value"), roles))
    return Conversation(messages, tools=parse_tools(record.get("tools"), where))


def _messages(record: dict, where: str, roles: dict) -> Conversation:
    roles = {**MESSAGES_ROLES, **roles}
    items = _list(_field(record, "messages", where, "messages"), where, "messages")
    messages = [
        parse_message(item, where, i, ("role", "content"), roles) for i, item in enumerate(items)
    ]
    return Conversation(messages, tools=parse_tools(record.get("tools"), where))


def _prompt_completion(record: dict, where: str, roles: dict) -> Conversation:
    roles = {**MESSAGES_ROLES, **roles}
    messages: list[dict] = []
    for key, role in (("prompt", "user"), ("completion", "assistant")):
        value = _field(record, key, where, "prompt_completion")
        if isinstance(value, str):
            messages.append({"role": role, "content": value})
        elif isinstance(value, list):  # TRL's conversational form: a list of messages
            start = len(messages)
            messages += [
                parse_message(item, where, start + i, ("role", "content"), roles)
                for i, item in enumerate(value)
            ]
        else:
            raise RecordError(
                where,
                "non_string_content",
                f"`{key}` must be a string or a list of messages, got {type(value).__name__}",
            )
    return Conversation(messages, tools=parse_tools(record.get("tools"), where))


def _text(record: dict, where: str, roles: dict) -> Conversation:
    text = _string(_field(record, "text", where, "text"), where, "`text`")
    if not text.strip():
        raise RecordError(where, "empty_content", "`text` is empty; drop the record or fill it in")
    return Conversation(messages=[], text=text)


_CONVERTERS: dict[str, Callable[[dict, str, dict], Conversation]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "messages": _messages,
    "prompt_completion": _prompt_completion,
    "text": _text,
}


def check_turns(messages: list[dict], where: str) -> None:
    """Contents are non-empty; system comes only first, then user; user -> assistant;
    assistant -> user or tool; tool -> tool or assistant; the last message is assistant."""
    for index, message in enumerate(messages):
        if not message["content"].strip():
            raise RecordError(
                where,
                "empty_content",
                f"message {index} ({message['role']}) is empty; drop the record or fill it in",
            )
    roles = [message["role"] for message in messages]
    if "assistant" not in roles:
        raise RecordError(
            where, "turn_order", f"no assistant message (roles {roles}); nothing to train on"
        )
    previous = None
    for index, role in enumerate(roles):
        if role == "system":
            allowed = index == 0
            expected = "a system message may only come first"
        elif previous in (None, "system"):
            allowed = role == "user"
            expected = "a conversation starts with a user message (after an optional system one)"
        else:
            allowed = role in _NEXT[previous]
            expected = f"after {previous} comes {' or '.join(_NEXT[previous])}"
        if not allowed:
            raise RecordError(
                where, "turn_order", f"message {index} ({role}) is out of order: {expected}"
            )
        previous = role
    if previous != "assistant":
        raise RecordError(
            where,
            "turn_order",
            f"the conversation ends with a {previous} message; it must end with an assistant reply",
        )
