"""RL prompts: the chats a policy replies to in online RL (GRPO), each with the verifier
that rewards a reply (eval/verifiers.py's registry) and what it checks the reply against.

A source record becomes a conversation through formats.to_conversation (every format,
column and role mapping, and error it has); the prompt is the chat before its last
assistant turn, and a record may carry no reply at all. Its verifier is the record's own
`verifier` field (with a `spec`, or an `answer` for exact_answer), else the source's
`verifier` key. An ifeval prompt with no spec gets data.constraints_per_prompt constraints
(constraints.py) attached to its last user turn, drawn by a generator seeded by the seed
and the record's location: the same whatever the order or the other records. A prompt
whose instruction overlaps an evaluation text is dropped and counted; a bad record follows
data.on_error (the ErrorPolicy). Nothing is dropped silently.
"""

from __future__ import annotations

import json
import os
import random
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field, replace
from pathlib import Path

from framework.config.schema import ConfigError, DataConfig, SourceConfig
from framework.data.constraints import attach_constraints
from framework.data.curate.decontam import EvalIndex, EvalText
from framework.data.formats import (
    MESSAGES_ROLES,
    SHAREGPT_ROLES,
    DataError,
    ErrorPolicy,
    RecordError,
    rename_columns,
    to_conversation,
)
from framework.data.readers import read_source
from framework.data.sources import (
    cap_records,
    hold_out,
    source_names,
    source_rng,
    weighted_sample,
)
from framework.run.files import write_atomically
from framework.suite.families import FAMILIES

# Decontaminated records listed by location in PromptSet.counts (the rest only counted).
SHOWN_DECONTAMINATED = 5
# Stands in for the reply of a record that has none (most RL prompt sets): to_conversation
# wants a reply to train on; the stand-in is dropped like any reply.
_STAND_IN = "(reply)"
_FIELDS = ("messages", "verifier", "spec", "where")


@dataclass(frozen=True)
class RLPrompt:
    messages: tuple[dict, ...]  # {"role", "content"}: system / user / tool turns, up to the reply
    verifier: str  # a name in eval/verifiers.py's VERIFIERS
    spec: dict  # what the verifier checks a reply against (JSON-serialisable)
    where: str  # the record's location, "file:line"

    def as_json(self) -> dict:
        return {"messages": list(self.messages), "verifier": self.verifier,
                "spec": self.spec, "where": self.where}  # fmt: skip


@dataclass
class PromptSet:
    train: list[RLPrompt]  # shuffled, each source weighted
    eval: list[RLPrompt]  # data.eval_sources' prompts, else data.eval_fraction held out
    # records, kept, skipped (per reason), decontaminated (and where, first few),
    # constraints (attached, per kind), verifiers (kept prompts per verifier), sources
    # (per source: records, kept, skipped, decontaminated), train, eval
    counts: dict = field(default_factory=dict)


def load_prompts(
    data: DataConfig,
    seed: int,
    *,
    verifiers: Collection[str],
    contamination: list[EvalText],
    policy: ErrorPolicy,
) -> PromptSet:
    """The RL prompts of data.sources (train, eval_fraction held out by seed) and
    data.eval_sources (eval). Guarantees: every prompt names one of `verifiers` and a spec
    for it; no prompt's instruction shares an n-gram (data.curate's decontaminate_ngram /
    min_words) with a `contamination` text; every record read is kept, skipped (counted
    per reason) or decontaminated (counted); held-out prompts never appear in train; the
    result depends only on (data, seed). Raises ConfigError for an unknown source verifier
    (before reading), DataError for a source with no usable record, and whatever `policy`
    raises for a bad record."""
    if not data.sources:
        raise ConfigError(
            "data.sources is empty: online RL needs prompt sources, each with a verifier "
            "(conf/data/rl_demo.yaml is one)"
        )
    keys = [f"data.sources[{i}]" for i in range(len(data.sources))]
    keys += [f"data.eval_sources[{i}]" for i in range(len(data.eval_sources))]
    sources = [*data.sources, *data.eval_sources]
    for key, source in zip(keys, sources, strict=True):
        if source.verifier is not None and source.verifier not in verifiers:
            raise ConfigError(
                f"{key}.verifier={source.verifier!r}: no such verifier; give one of "
                f"{sorted(verifiers)}"
            )
    index = EvalIndex.build(
        contamination, data.curate.decontaminate_ngram, data.curate.decontaminate_min_words
    )
    reading = _Reading(data, seed, tuple(sorted(verifiers)), index, policy)
    names = source_names(sources)
    fraction = 0.0 if data.eval_sources else data.eval_fraction
    train: list[RLPrompt] = []
    evaluation: list[RLPrompt] = []
    for number, (source, name, key) in enumerate(zip(sources, names, keys, strict=True)):
        prompts = reading.source(source, name, key)
        if number >= len(data.sources):
            evaluation += prompts
            continue
        mine, held = hold_out(prompts, fraction, source_rng(seed, name, "eval"))
        train += weighted_sample(mine, source.weight, source_rng(seed, name, "weight"))
        evaluation += held
    source_rng(seed, "", "shuffle").shuffle(train)
    counts = reading.counts | {"train": len(train), "eval": len(evaluation)}
    return PromptSet(train=train, eval=evaluation, counts=counts)


def _new_counts() -> dict:
    return {
        "records": 0,
        "kept": 0,
        "skipped": {},
        "skipped_first": {},  # reason -> the first such record's error
        "decontaminated": 0,
        "decontaminated_first": [],  # {"where", "overlaps"} of the first few
        "constraints": {"attached": 0, "kinds": {}},
        "verifiers": {},
        "sources": {},
    }


@dataclass
class _Reading:
    """Reads sources into prompts, counting what it keeps, skips and drops."""

    data: DataConfig
    seed: int
    verifiers: tuple[str, ...]
    index: EvalIndex
    policy: ErrorPolicy
    counts: dict = field(default_factory=_new_counts)

    def source(self, source: SourceConfig, name: str, key: str) -> list[RLPrompt]:
        """The source's prompts in reading order, after its max_samples cap."""
        raw = list(read_source(source))
        raw = cap_records(raw, source.max_samples, source_rng(self.seed, name, "cap"))
        kept, decontaminated = [], 0
        for where, record in raw:
            try:
                prompt = self.prompt(record, where, source, key)
            except RecordError as err:
                self.policy(err, name)
                continue
            if prompt is None:
                decontaminated += 1
            else:
                kept.append(prompt)
        skipped = dict(self.policy.skipped.get(name, {}))
        self._count(name, len(raw), len(kept), skipped, decontaminated)
        if not kept:
            found = f"of {len(raw)} records, {decontaminated} decontaminated, skipped {skipped}"
            raise DataError(
                f"source {name!r} ({source.path}) has no usable prompt "
                f"({found if raw else 'it is empty'}); check its path, `format`, `columns` "
                f"and {key}.verifier"
            )
        return kept

    def _count(self, name: str, records: int, kept: int, skipped: dict, dropped: int) -> None:
        self.counts["sources"][name] = {
            "records": records,
            "kept": kept,
            "skipped": skipped,
            "decontaminated": dropped,
        }
        self.counts["records"] += records
        self.counts["kept"] += kept
        for reason, count in skipped.items():
            self.counts["skipped"][reason] = self.counts["skipped"].get(reason, 0) + count
            self.counts["skipped_first"].setdefault(reason, self.policy.first[reason])

    def prompt(self, record, where: str, source: SourceConfig, key: str) -> RLPrompt | None:
        """The record's prompt, or None when its instruction is contaminated (counted)."""
        if isinstance(record, RecordError):
            raise record
        fields, messages = prompt_messages(record, where, source)
        found = self.index.match("\n".join(m["content"] for m in messages if m["role"] == "user"))
        if found is not None:
            self.counts["decontaminated"] += 1
            if len(self.counts["decontaminated_first"]) < SHOWN_DECONTAMINATED:
                self.counts["decontaminated_first"].append({"where": where, "overlaps": found})
            return None
        verifier = self.verifier(fields, where, source, key)
        given = fields.get("spec")
        if given is not None and not isinstance(given, dict):
            raise RecordError(where, "bad_spec", f"`spec` must be an object, got {given!r:.80}")
        if verifier == "ifeval" and given is None:
            messages, spec = self.constrained(messages, _seed_key(where, source))
        else:
            spec = _SPECS.get(verifier, _given_spec)(fields, given, messages, where)
        verifiers = self.counts["verifiers"]
        verifiers[verifier] = verifiers.get(verifier, 0) + 1
        return RLPrompt(tuple(messages), verifier, spec, where)

    def verifier(self, fields: dict, where: str, source: SourceConfig, key: str) -> str:
        """The record's `verifier` field, else the source's; one of self.verifiers."""
        name = fields.get("verifier", source.verifier)
        if name is None:
            raise RecordError(
                where,
                "no_verifier",
                f"no verifier: set {key}.verifier (one of {', '.join(self.verifiers)}) or "
                'give the record a "verifier" field',
            )
        if name not in self.verifiers:
            raise RecordError(
                where,
                "unknown_verifier",
                f'"verifier"={name!r}: no such verifier; give one of {list(self.verifiers)}',
            )
        return name

    def constrained(self, messages: list[dict], seed_key: str) -> tuple[list[dict], dict]:
        """The chat with constraints attached to its last user turn, and the ifeval spec."""
        rng = random.Random(f"{self.seed}/{seed_key}/constraints")
        last = max(i for i, m in enumerate(messages) if m["role"] == "user")
        text, spec = attach_constraints(
            messages[last]["content"], rng, self.data.constraints_per_prompt
        )
        messages = [*messages[:last], {"role": "user", "content": text}, *messages[last + 1 :]]
        constraints = self.counts["constraints"]
        constraints["attached"] += len(spec["instruction_id_list"])
        kinds = Counter(constraints["kinds"]) + Counter(spec["instruction_id_list"])
        constraints["kinds"] = dict(sorted(kinds.items()))
        return messages, spec


def prompt_messages(record, where: str, source: SourceConfig) -> tuple[dict, list[dict]]:
    """(the record under our field names, its chat before the last assistant turn, as
    {"role", "content"} messages). Raises RecordError as to_conversation does, and for a
    `text` record, which has no turn to reply to."""
    fields = rename_columns(record, source.columns) if isinstance(record, dict) else record
    renamed = replace(source, columns={})
    conversation = to_conversation(_with_stand_in_reply(fields, source), where, renamed)
    if conversation.text is not None:
        raise RecordError(
            where,
            "unknown_format",
            "a `text` record has no turn to reply to; RL prompts need instruction, prompt, "
            "messages or conversations (set `format:` to match the data)",
        )
    messages = conversation.messages
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    return fields, [{"role": m["role"], "content": m["content"]} for m in messages[:last]]


def _with_stand_in_reply(fields, source: SourceConfig):
    """`fields` with a stand-in reply appended where the record has none."""
    if not isinstance(fields, dict) or "chosen" in fields:
        return fields
    turns_key = next((k for k in ("conversations", "messages") if k in fields), None)
    if turns_key is not None:
        turns = fields[turns_key]
        last = turns[-1] if isinstance(turns, list) and turns else None
        if not isinstance(last, dict):
            return fields
        sharegpt = "from" in last
        roles = {**(SHAREGPT_ROLES if sharegpt else MESSAGES_ROLES), **source.roles}
        role = last.get("from" if sharegpt else "role")
        if isinstance(role, str) and roles.get(role) == "assistant":
            return fields
        reply = {"from": "gpt", "value": _STAND_IN} if sharegpt else None
        reply = reply or {"role": "assistant", "content": _STAND_IN}
        return {**fields, turns_key: [*turns, reply]}
    for prompt_key, reply_key in (("instruction", "output"), ("prompt", "completion")):
        if prompt_key in fields:
            return fields if reply_key in fields else {**fields, reply_key: _STAND_IN}
    return fields


def _seed_key(where: str, source: SourceConfig) -> str:
    """`where` without the folder the source sits in: constraints stay the same when the
    data moves (another checkout, another cluster)."""
    parent = str(Path(source.path).expanduser().parent)
    return where.removeprefix(parent + os.sep) if parent != "." else where


def _ifeval_spec(fields: dict, given: dict, messages: list[dict], where: str) -> dict:
    ids, kwargs = given.get("instruction_id_list"), given.get("kwargs")
    if (
        not isinstance(ids, list)
        or not ids
        or not all(isinstance(i, str) for i in ids)
        or not isinstance(kwargs, list)
        or len(kwargs) != len(ids)
        or not all(k is None or isinstance(k, dict) for k in kwargs)
    ):
        raise RecordError(
            where,
            "bad_spec",
            'an ifeval `spec` needs "instruction_id_list" (IFEval instruction ids) and '
            '"kwargs" (one object per id, {} for none)',
        )
    users = [m["content"] for m in messages if m["role"] == "user"]
    prompt = given.get("prompt") or users[-1]
    return {**given, "prompt": prompt, "kwargs": [dict(k or {}) for k in kwargs]}


def _answer_spec(fields: dict, given: dict | None, messages: list[dict], where: str) -> dict:
    answer = (given or {}).get("answer", fields.get("answer"))
    fix = "exact_answer rewards a reply whose last number equals the record's `answer`"
    if answer is None or isinstance(answer, bool):
        raise RecordError(where, "bad_spec", f"no `answer` field; {fix}")
    number = str(answer).replace(",", "").strip()
    try:
        float(number)
    except ValueError:
        raise RecordError(
            where, "bad_spec", f"`answer`={answer!r} is not a number; {fix}"
        ) from None
    return {"answer": number}


def _suite_spec(fields: dict, given: dict | None, messages: list[dict], where: str) -> dict:
    given = given or {}
    if given.get("family") not in FAMILIES or not isinstance(given.get("reference"), str):
        raise RecordError(
            where,
            "bad_spec",
            'verifier suite needs a `spec` of {"family": a family of framework/suite/'
            f'families.py, "reference": the expected answer}}; got {given!r:.80}',
        )
    return {"family": given["family"], "reference": given["reference"]}


def _given_spec(fields: dict, given: dict | None, messages: list[dict], where: str) -> dict:
    if given is None:
        raise RecordError(where, "bad_spec", "this verifier needs a `spec` object in the record")
    return given


# verifier -> the spec a record gives it, checked (ifeval without a spec: constraints)
_SPECS = {"ifeval": _ifeval_spec, "exact_answer": _answer_spec, "suite": _suite_spec}


def write_prompts(path: str | Path, prompts: list[RLPrompt]) -> None:
    """One JSON object per prompt and line, written atomically."""
    lines = (json.dumps(p.as_json(), ensure_ascii=False) + "\n" for p in prompts)
    write_atomically(path, "".join(lines))


def read_prompts(path: str | Path) -> list[RLPrompt]:
    """The prompts write_prompts wrote, in order. Raises DataError naming file:line for a
    line that is not one."""
    prompts = []
    text = Path(path).read_text(encoding="utf-8")
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{number}: invalid JSON ({err.msg})") from None
        if not isinstance(record, dict) or sorted(record) != sorted(_FIELDS):
            raise DataError(f"{path}:{number}: not an RL prompt; expected the keys {_FIELDS}")
        prompts.append(RLPrompt(tuple(record["messages"]), *(record[k] for k in _FIELDS[1:])))
    return prompts
