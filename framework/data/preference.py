"""Preference pairs: records with a prompt and a `chosen` and a `rejected` reply, rendered
as two sequences, fitted to a row together and laid out in micro batches.

Accepted records (columns renamed and roles mapped as for SFT data):
- sharegpt: `conversations` (or `messages`) ending with the user's turn, `chosen` and
  `rejected` each a turn object, a string or a list of turns (LLaMA-Factory's shape);
- TRL: `prompt` (a string or a list of messages) with `chosen` / `rejected` (strings or
  lists of messages); or only `chosen` and `rejected`, whole conversations whose shared
  beginning is the prompt (TRL's implicit prompt);
- alpaca: `instruction` (and `input`) with `chosen` / `rejected` strings.

Each pair is two sequences, prompt + chosen and prompt + rejected: the prompt is repeated,
not shared. Sharing it would need a tree-shaped attention mask (both replies attend to
one prompt), which varlen kernels such as flash-attention's cannot express; repeated,
each sequence is an ordinary document of a packed row, and per-document attention,
position ids and the loss path are those of SFT. Only reply tokens carry loss weight:
they are the tokens whose log-probabilities are summed.

In the artifact pair i is examples 2i (chosen) and 2i + 1 (rejected). Packing places
pairs, not sequences, so a pair's two sequences always share a row, and a micro batch
holds whole pairs: the loss of a pair needs both.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from framework.config.schema import SourceConfig
from framework.data.dataset import TokenizedDataset
from framework.data.formats import (
    MESSAGES_ROLES,
    SHAREGPT_ROLES,
    Conversation,
    RecordError,
    check_turns,
    parse_message,
    parse_tools,
    rename_columns,
    system_messages,
)
from framework.data.pack import PackingPlan
from framework.data.render import RenderedExample, render

_PROMPT_KEYS = ("conversations", "messages", "prompt", "instruction")


@dataclass
class PreferencePair:
    chosen: Conversation  # prompt + chosen reply; only the reply's assistant turns train
    rejected: Conversation


@dataclass
class RenderedPair:
    chosen: RenderedExample
    rejected: RenderedExample


def _turns(value, where: str, what: str, roles: dict, start: int) -> list[dict]:
    """A string (a user turn for the prompt, else an assistant one), a turn object or a
    list of turns -> messages."""
    if isinstance(value, str):
        value = [{"role": "assistant" if what != "prompt" else "user", "content": value}]
    elif isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RecordError(
            where,
            "non_string_content",
            f"`{what}` must be a string, a turn or a list of turns, got {type(value).__name__}",
        )
    return [
        parse_message(turn, where, start + i, _keys(turn), roles) for i, turn in enumerate(value)
    ]


def _keys(turn) -> tuple[str, str]:
    return ("from", "value") if isinstance(turn, dict) and "from" in turn else ("role", "content")


def _prompt(record: dict, where: str, roles: dict) -> list[dict] | None:
    """The prompt's messages, or None for TRL's implicit prompt."""
    key = next((k for k in _PROMPT_KEYS if k in record), None)
    if key is None:
        return None
    if key == "instruction":
        parts = (record["instruction"], record.get("input", ""))
        text = "\n\n".join(p for p in parts if isinstance(p, str) and p.strip())
        return _turns(text, where, "prompt", roles, 0)
    return _turns(record[key], where, "prompt", roles, 0)


def _split_shared(chosen: list[dict], rejected: list[dict]) -> int:
    """How many leading messages two whole conversations share (the implicit prompt)."""
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    return shared


def to_pair(record: dict, where: str, source: SourceConfig) -> PreferencePair:
    """One preference record as `source` describes it (module docstring). Raises
    RecordError for a record that is not a usable pair."""
    if not isinstance(record, dict):
        raise RecordError(
            where, "unknown_format", f"a record must be a JSON object, got {type(record).__name__}"
        )
    record = rename_columns(record, source.columns)
    missing = [key for key in ("chosen", "rejected") if key not in record]
    if missing:
        raise RecordError(
            where,
            "missing_field",
            f"a preference record has no `{'` or `'.join(missing)}` (keys {sorted(record)}); "
            "map the data's columns with `columns: {chosen: <column>, rejected: <column>}`",
        )
    roles = {**MESSAGES_ROLES, **SHAREGPT_ROLES, **source.roles}
    prompt = _prompt(record, where, roles)
    chosen = _turns(record["chosen"], where, "chosen", roles, len(prompt or []))
    rejected = _turns(record["rejected"], where, "rejected", roles, len(prompt or []))
    if prompt is None:
        shared = _split_shared(chosen, rejected)
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
    if chosen == rejected:
        raise RecordError(
            where,
            "same_replies",
            "`chosen` and `rejected` are the same reply, so the pair teaches nothing; drop it",
        )
    head = system_messages(record, where) + [{**m, "weight": 0.0} for m in prompt]
    tools = parse_tools(record.get("tools"), where)
    pair = PreferencePair(Conversation(head + chosen, tools), Conversation(head + rejected, tools))
    for conversation in (pair.chosen, pair.rejected):
        check_turns(conversation.messages, where)
    return pair


def render_pair(tokenizer, pair: PreferencePair, where: str) -> RenderedPair:
    """Both sequences through the chat template; the replies' assistant turns trained."""
    return RenderedPair(
        render(tokenizer, pair.chosen, "assistant", where),
        render(tokenizer, pair.rejected, "assistant", where),
    )


def fitted_lengths(chosen: int, rejected: int, max_len: int) -> tuple[int, int]:
    """Lengths of a pair cut to fit one row of `max_len` (keeping each sequence's start):
    each keeps at least half the row, and a shorter one leaves the rest to the other."""
    half = max_len // 2
    kept_chosen = min(chosen, max(half, max_len - rejected))
    return kept_chosen, min(rejected, max_len - kept_chosen)


def pair_lengths(dataset: TokenizedDataset) -> np.ndarray:
    """Tokens of each pair (its two sequences), the unit that packing places."""
    lengths = dataset.lengths()
    return lengths[0::2] + lengths[1::2]


def sequence_plan(pair_plan: PackingPlan) -> PackingPlan:
    """A plan over pairs as a plan over their sequences: pair p is sequences 2p, 2p + 1."""
    ids = np.stack([2 * pair_plan.example_ids, 2 * pair_plan.example_ids + 1], axis=1)
    return PackingPlan(ids.reshape(-1), 2 * pair_plan.row_offsets)


def pair_fields(rows: list[np.ndarray], offsets: np.ndarray, width: int) -> dict:
    """What a micro batch of whole pairs (rows of sequence ids, each pair's two adjacent)
    adds to the collated rows: `pair_ids` (the pairs, in order: local sequence 2k is pair
    k's chosen reply, 2k + 1 its rejected) and `sequence_index`, each position's local
    sequence (-1 for padding)."""
    sequence_index = np.full((len(rows), width), -1, dtype=np.int64)
    pairs, local = [], 0
    for r, row in enumerate(rows):
        cursor = 0
        for sequence in row:
            length = int(offsets[sequence + 1] - offsets[sequence])
            sequence_index[r, cursor : cursor + length] = local
            cursor, local = cursor + length, local + 1
            if sequence % 2 == 0:
                pairs.append(sequence // 2)
    return {
        "pair_ids": torch.tensor(pairs, dtype=torch.long),
        "sequence_index": torch.from_numpy(sequence_index),
    }
