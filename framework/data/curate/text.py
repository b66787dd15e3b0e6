"""The text curation looks at: a record's prompt and replies, normalised, as words."""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass

from framework.data.formats import Conversation
from framework.data.preference import PreferencePair

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")


def normalise(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: what two copies of a text share after
    copy-paste, re-encoding or re-wrapping."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def words(text: str) -> list[str]:
    return _WORD.findall(normalise(text))


def ngrams(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    """The word n-grams of `tokens`; a text shorter than n is its own single gram."""
    if len(tokens) < n:
        return {tuple(tokens)} if tokens else set()
    return {tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)}


@dataclass(frozen=True)
class RecordText:
    """What a record says: its prompt (user and tool turns; system prompts and tool
    schemas are shared boilerplate, left out), its last user turn, and its replies (the
    assistant turns; of a preference pair, the chosen reply then the rejected one)."""

    prompt: str
    last_user: str
    replies: tuple[str, ...]
    exact_key: str  # a digest of the whole record, normalised (system and tools included)

    @property
    def content(self) -> str:
        return "\n".join([self.prompt, *self.replies])


def _prompt_and_replies(messages: list[dict]) -> tuple[list[dict], list[dict]]:
    prompt = [m for m in messages if m["role"] in ("user", "tool")]
    return prompt, [m for m in messages if m["role"] == "assistant"]


def _normalised(value):
    """`value` with every string in it normalised (before JSON escapes hide newlines)."""
    if isinstance(value, str):
        return normalise(value)
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    return value


def _digest(value) -> str:
    canonical = json.dumps(_normalised(value), sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record_text(found: Conversation | PreferencePair) -> RecordText:
    if isinstance(found, PreferencePair):
        chosen, rejected = found.chosen.messages, found.rejected.messages
        shared = 0
        while shared < min(len(chosen), len(rejected)) and chosen[shared] == rejected[shared]:
            shared += 1
        prompt, _ = _prompt_and_replies(chosen[:shared])
        replies = [
            "\n".join(m["content"] for m in side[shared:] if m["role"] == "assistant")
            for side in (chosen, rejected)
        ]
        whole = [chosen, rejected, found.chosen.tools]
    elif found.text is not None:
        return RecordText("", "", (found.text,), _digest(found.text))
    else:
        prompt, answers = _prompt_and_replies(found.messages)
        replies = [m["content"] for m in answers]
        whole = [found.messages, found.tools]
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return RecordText(
        prompt="\n".join(m["content"] for m in prompt),
        last_user=users[-1] if users else "",
        replies=tuple(replies),
        exact_key=_digest(whole),
    )
