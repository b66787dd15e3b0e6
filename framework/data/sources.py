"""Where records come from, and how sources become the train and eval lists.

A source is a JSON / JSONL / Parquet / CSV file, a folder of them, a `datasets` directory
written by `save_to_disk`, a hub data set, or (with no sources configured) the built-in
instruction suite: its training chats, and its validation items as the eval split. Each
source is read, capped at `max_samples`, converted (bad records go through the
ErrorPolicy), optionally split for eval, and weighted into the training mix.

Everything is deterministic for (config, seed): each random choice has its own generator
seeded by the seed, the source's name and what the choice is for.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from framework.config.schema import DataConfig, SourceConfig, SuiteConfig
from framework.data.curate.decontam import EvalIndex
from framework.data.curate.references import eval_texts
from framework.data.curate.stage import Removal, curate, removal_counts
from framework.data.feedback import feedback_records
from framework.data.formats import (
    Conversation,
    DataError,
    ErrorPolicy,
    RecordError,
    to_conversation,
)
from framework.data.parallel import LocalMapper, Mapper
from framework.data.preference import PreferencePair, to_pair
from framework.data.readers import Raw, read_source
from framework.suite.build import eval_items, trained_families, training_chats

# The built-in suite's sources: its training chats, and validation items of the trained
# and of the held-out families (for eval loss per group). Also paths a user may give, to
# mix the suite with other data (conf/data/suite_alpaca_mix.yaml).
SUITE_TRAIN, SUITE_TRAINED, SUITE_HELD_OUT = "<suite>", "<suite:trained>", "<suite:held-out>"
_SUITE_NAMES = {
    SUITE_TRAIN: "suite",
    SUITE_TRAINED: "suite-trained",
    SUITE_HELD_OUT: "suite-held-out",
}
_EVAL_LOSS_ITEMS_PER_FAMILY = 8
T = TypeVar("T")  # a record or a prompt: what hold_out and weighted_sample share out


@dataclass
class LoadedRecord:
    source: str
    where: str
    conversation: Conversation | PreferencePair


@dataclass
class SourceSummary:
    name: str
    records: int = 0  # read, after the max_samples cap
    kept: int = 0  # converted without error and kept by curation, before weighting
    taken: int = 0  # in the training mix after weighting (for an eval source: in eval)
    held_out: int = 0  # moved to eval by eval_fraction
    removed: dict[str, int] = field(default_factory=dict)  # by curation, per reason


@dataclass
class LoadedData:
    train: list[LoadedRecord]
    eval: list[LoadedRecord]
    summaries: dict[str, SourceSummary]
    removals: list[Removal] = field(default_factory=list)


def load_data(
    cfg: DataConfig,
    seed: int,
    policy: ErrorPolicy,
    pairs: bool = False,
    *,
    mapper: Mapper | None = None,
    reference_files: tuple[str, ...] = (),
) -> LoadedData:
    """The training mix and the eval split for `cfg`, as conversations or (`pairs`, for
    preference objectives) as preference pairs, curated (data.curate; `reference_files`
    are decontaminated against as well). Guarantees: held-out records never appear in
    train; each source contributes round(weight x kept) examples; train is shuffled; the
    result depends only on (cfg, seed), not on `mapper` (where conversion and curation
    run). Raises DataError for an unreadable source or one with no usable record, and
    whatever `policy` raises for a bad record."""
    mapper = mapper or LocalMapper(cfg.num_proc or os.cpu_count() or 1)
    sources, eval_sources = cfg.sources, cfg.eval_sources
    if not sources:
        sources = [_suite_source(SUITE_TRAIN)]
        if not eval_sources and not cfg.eval_fraction:
            eval_sources = [_suite_source(SUITE_TRAINED)]
            if cfg.suite.held_out:
                eval_sources.append(_suite_source(SUITE_HELD_OUT))
    names = source_names([*sources, *eval_sources])
    fraction = 0.0 if eval_sources else cfg.eval_fraction
    train_names = names[: len(sources)]
    loaded = [
        _load_source(s, n, cfg, seed, policy, pairs, mapper)
        for s, n in zip(sources, train_names, strict=True)
    ]
    given = [
        _load_source(s, n, cfg, seed, policy, pairs, mapper)
        for s, n in zip(eval_sources, names[len(sources) :], strict=True)
    ]
    weighted = [
        (n, s.weight, records)
        for s, n, (records, _) in zip(sources, train_names, loaded, strict=True)
    ]
    references = [r for records, _ in given for r in records]
    kept, removals = _curated(cfg, weighted, references, mapper, pairs, reference_files)
    counts = removal_counts(removals)
    train: list[LoadedRecord] = []
    evaluation: list[LoadedRecord] = []
    summaries: dict[str, SourceSummary] = {}
    for source, (_, summary) in zip(sources, loaded, strict=True):
        name = summary.name
        mine, held = hold_out(kept[name], fraction, source_rng(seed, name, "eval"))
        taken = weighted_sample(mine, source.weight, source_rng(seed, name, "weight"))
        summary.kept, summary.removed = len(kept[name]), counts.get(name, {})
        summary.held_out, summary.taken = len(held), len(taken)
        train += taken
        evaluation += held
        summaries[name] = summary
    for records, summary in given:
        summary.taken = len(records)
        evaluation += records
        summaries[summary.name] = summary
    source_rng(seed, "", "shuffle").shuffle(train)
    return LoadedData(train=train, eval=evaluation, summaries=summaries, removals=removals)


def _curated(
    cfg: DataConfig,
    weighted: list[tuple[str, float, list[LoadedRecord]]],
    references: list[LoadedRecord],
    mapper: Mapper,
    pairs: bool,
    reference_files: tuple[str, ...],
) -> tuple[dict[str, list[LoadedRecord]], list[Removal]]:
    """Each source's records after data.curate, and what it removed."""
    if not cfg.curate.enabled:
        return {name: records for name, _, records in weighted}, []
    index = None
    if cfg.curate.decontaminate:
        texts = eval_texts(cfg.curate, cfg.suite, references, list(reference_files))
        index = EvalIndex.build(
            texts, cfg.curate.decontaminate_ngram, cfg.curate.decontaminate_min_words
        )
    return curate(weighted, index, cfg.curate, mapper, pairs)


def _convert_chunk(raw: list[Raw], shared: tuple[SourceConfig, bool]) -> list:
    """Each raw record converted, or the RecordError it raised (applied later, in order)."""
    source, pairs = shared
    convert = to_pair if pairs else to_conversation
    out = []
    for where, record in raw:
        try:
            if isinstance(record, RecordError):
                raise record
            out.append(convert(record, where, source))
        except RecordError as err:
            out.append(err)
    return out


def _load_source(
    source: SourceConfig,
    name: str,
    cfg: DataConfig,
    seed: int,
    policy: ErrorPolicy,
    pairs: bool,
    mapper: Mapper,
) -> tuple[list[LoadedRecord], SourceSummary]:
    """The source's converted records, in reading order, after the max_samples cap."""
    raw = list(_read(source, cfg.suite))
    raw = cap_records(raw, source.max_samples, source_rng(seed, name, "cap"))
    kept = []
    converted = mapper(_convert_chunk, raw, (source, pairs), f"reading {name}")
    for (where, _), found in zip(raw, converted, strict=True):
        if isinstance(found, RecordError):
            policy(found, name)
        else:
            kept.append(LoadedRecord(name, where, found))
    if not kept:
        found = (
            f"all {len(raw)} records were bad {policy.skipped.get(name)}" if raw else "it is empty"
        )
        raise DataError(
            f"source {name!r} ({source.path}) has no usable record: {found}; check its path, "
            "`format`, `columns` and `roles` in the data config"
        )
    return kept, SourceSummary(name, records=len(raw), kept=len(kept))


def source_names(sources: list[SourceConfig]) -> list[str]:
    """Each source's label: `name`, else the file's stem, the folder's or the hub name;
    a repeated label gets #2, #3, ... so that summaries and seeds stay per source."""
    seen: Counter[str] = Counter()
    names = []
    for source in sources:
        path = Path(source.path).expanduser()
        if source.name or source.path in _SUITE_NAMES:
            base = source.name or _SUITE_NAMES[source.path]
        elif path.exists():
            base = path.name if path.is_dir() else path.stem
        else:
            base = source.path
        seen[base] += 1
        names.append(base if seen[base] == 1 else f"{base}#{seen[base]}")
    return names


def source_rng(seed: int, name: str, purpose: str) -> random.Random:
    # String seeds hash through SHA-512: stable across processes, unlike hash().
    return random.Random(f"{seed}/{name}/{purpose}")


def cap_records(raw: list[Raw], max_samples: int | None, rng: random.Random) -> list[Raw]:
    """A random `max_samples` of the records, in their original order."""
    if max_samples is None or max_samples >= len(raw):
        return raw
    return [raw[i] for i in sorted(rng.sample(range(len(raw)), max_samples))]


def hold_out(kept: list[T], fraction: float, rng: random.Random) -> tuple[list[T], list[T]]:
    """(train, held out): round(fraction x n) records held out, at least one when the
    fraction is positive, and never all of them."""
    if fraction <= 0 or len(kept) < 2:
        return kept, []
    count = min(len(kept) - 1, max(1, round(len(kept) * fraction)))
    held = set(rng.sample(range(len(kept)), count))
    return (
        [r for i, r in enumerate(kept) if i not in held],
        [r for i, r in enumerate(kept) if i in held],
    )


def weighted_sample(kept: list[T], weight: float, rng: random.Random) -> list[T]:
    """round(weight x n) examples: every record int(weight) times, plus a sample without
    replacement for the fractional part."""
    whole = int(weight)
    extra = round(weight * len(kept)) - whole * len(kept)
    return kept * whole + [kept[i] for i in sorted(rng.sample(range(len(kept)), extra))]


def trains_on_suite(cfg: DataConfig) -> bool:
    """Whether the suite's training chats are in the mix: alone (no sources) or as a
    `<suite>` source beside others."""
    return not cfg.sources or any(source.path == SUITE_TRAIN for source in cfg.sources)


def _suite_source(path: str) -> SourceConfig:
    return SourceConfig(path=path, format="messages")


def _read_suite(path: str, suite: SuiteConfig) -> Iterator[Raw]:
    if path == SUITE_TRAIN:
        chats = training_chats(
            trained_families(suite), suite.train_examples, suite.seed, suite.multi_turn
        )
        yield from ((f"suite[{i}]", chat) for i, chat in enumerate(chats))
        return
    held_out = path == SUITE_HELD_OUT
    families = suite.held_out if held_out else trained_families(suite)
    items = eval_items(families, "validation", _EVAL_LOSS_ITEMS_PER_FAMILY, suite.seed)
    for index, item in enumerate(items):
        yield (
            f"suite validation {item.family}[{index % _EVAL_LOSS_ITEMS_PER_FAMILY}]",
            item.record(),
        )


def _read(source: SourceConfig, suite: SuiteConfig) -> Iterator[Raw]:
    """Every record of the source with its location string."""
    if source.path.startswith("<suite"):
        yield from _read_suite(source.path, suite)
    elif source.format == "feedback":
        yield from feedback_records(source.path)
    else:
        yield from read_source(source)
