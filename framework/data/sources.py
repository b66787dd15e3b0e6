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

import csv
import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from framework.config.schema import DataConfig, SourceConfig, SuiteConfig
from framework.data.formats import (
    Conversation,
    DataError,
    ErrorPolicy,
    RecordError,
    to_conversation,
)
from framework.data.preference import PreferencePair, to_pair
from framework.suite.build import eval_items, trained_families, training_chats

SUPPORTED = (".jsonl", ".json", ".parquet", ".csv")
# Files that `datasets.save_to_disk` writes (a Dataset, or a DatasetDict at the top level).
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
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

# (where, record), or (where, RecordError) for a record that could not even be parsed.
Raw = tuple[str, object]


@dataclass
class LoadedRecord:
    source: str
    where: str
    conversation: Conversation | PreferencePair


@dataclass
class SourceSummary:
    name: str
    records: int = 0  # read, after the max_samples cap
    kept: int = 0  # converted without error, before weighting
    taken: int = 0  # in the training mix after weighting (for an eval source: in eval)
    held_out: int = 0  # moved to eval by eval_fraction


@dataclass
class LoadedData:
    train: list[LoadedRecord]
    eval: list[LoadedRecord]
    summaries: dict[str, SourceSummary]


def load_data(cfg: DataConfig, seed: int, policy: ErrorPolicy, pairs: bool = False) -> LoadedData:
    """The training mix and the eval split for `cfg`, as conversations or (`pairs`, for
    preference objectives) as preference pairs. Guarantees: held-out records never
    appear in train; each source contributes round(weight x kept) examples; train is
    shuffled; the result depends only on (cfg, seed). Raises DataError for an unreadable
    source or one with no usable record, and whatever `policy` raises for a bad record."""
    sources, eval_sources = cfg.sources, cfg.eval_sources
    if not sources:
        sources = [_suite_source(SUITE_TRAIN)]
        if not eval_sources and not cfg.eval_fraction:
            eval_sources = [_suite_source(SUITE_TRAINED)]
            if cfg.suite.held_out:
                eval_sources.append(_suite_source(SUITE_HELD_OUT))
    names = _names([*sources, *eval_sources])
    holdout = 0.0 if eval_sources else cfg.eval_fraction
    train: list[LoadedRecord] = []
    evaluation: list[LoadedRecord] = []
    summaries: dict[str, SourceSummary] = {}
    for source, name in zip(sources, names[: len(sources)], strict=True):
        kept, summary = _load_source(source, name, cfg, seed, policy, pairs)
        kept, held = _hold_out(kept, holdout, _rng(seed, name, "eval"))
        taken = _weighted(kept, source.weight, _rng(seed, name, "weight"))
        summary.held_out, summary.taken = len(held), len(taken)
        train += taken
        evaluation += held
        summaries[name] = summary
    for source, name in zip(eval_sources, names[len(sources) :], strict=True):
        kept, summary = _load_source(source, name, cfg, seed, policy, pairs)
        summary.taken = len(kept)
        evaluation += kept
        summaries[name] = summary
    _rng(seed, "", "shuffle").shuffle(train)
    return LoadedData(train=train, eval=evaluation, summaries=summaries)


def _load_source(
    source: SourceConfig, name: str, cfg: DataConfig, seed: int, policy: ErrorPolicy, pairs: bool
) -> tuple[list[LoadedRecord], SourceSummary]:
    """The source's converted records, in reading order, after the max_samples cap."""
    raw = list(_read(source, cfg.suite))
    raw = _cap(raw, source.max_samples, _rng(seed, name, "cap"))
    kept = []
    convert = to_pair if pairs else to_conversation
    for where, record in raw:
        try:
            if isinstance(record, RecordError):
                raise record
            kept.append(LoadedRecord(name, where, convert(record, where, source)))
        except RecordError as err:
            policy(err, name)
    if not kept:
        found = (
            f"all {len(raw)} records were bad {policy.skipped.get(name)}" if raw else "it is empty"
        )
        raise DataError(
            f"source {name!r} ({source.path}) has no usable record: {found}; check its path, "
            "`format`, `columns` and `roles` in the data config"
        )
    return kept, SourceSummary(name, records=len(raw), kept=len(kept))


def _names(sources: list[SourceConfig]) -> list[str]:
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


def _rng(seed: int, name: str, purpose: str) -> random.Random:
    # String seeds hash through SHA-512: stable across processes, unlike hash().
    return random.Random(f"{seed}/{name}/{purpose}")


def _cap(raw: list[Raw], max_samples: int | None, rng: random.Random) -> list[Raw]:
    """A random `max_samples` of the records, in their original order."""
    if max_samples is None or max_samples >= len(raw):
        return raw
    return [raw[i] for i in sorted(rng.sample(range(len(raw)), max_samples))]


def _hold_out(
    kept: list[LoadedRecord], fraction: float, rng: random.Random
) -> tuple[list[LoadedRecord], list[LoadedRecord]]:
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


def _weighted(kept: list[LoadedRecord], weight: float, rng: random.Random) -> list[LoadedRecord]:
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
        return
    path = Path(source.path).expanduser()
    if path.is_dir() and any((path / marker).exists() for marker in _SAVED_MARKERS):
        yield from _read_saved(path, source.split)
    elif path.is_dir():
        for file in _files_in(path):
            yield from _read_file(file)
    elif path.is_file():
        yield from _read_file(path)
    elif source.path.startswith(("/", ".", "~")) or path.suffix.lower() in SUPPORTED:
        raise DataError(f"{source.path}: no such file or folder")
    else:
        yield from _read_hub(source)


def _files_in(folder: Path) -> list[Path]:
    """Supported files under `folder`, recursively, sorted; hidden ones left out."""
    files = sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.suffix.lower() in SUPPORTED
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )
    if not files:
        raise DataError(f"{folder}: no {'/'.join(SUPPORTED)} files in this folder")
    return files


def _read_file(path: Path) -> Iterator[Raw]:
    readers = {
        ".json": _read_json,
        ".jsonl": _read_json,
        ".parquet": _read_parquet,
        ".csv": _read_csv,
    }
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}; use {'/'.join(SUPPORTED)}, a "
            "folder of them, a saved `datasets` directory or a hub data set name"
        )
    yield from reader(path)


def _read_json(path: Path) -> Iterator[Raw]:
    """A JSON list (`file[index]`) or JSONL (`file:line`, 1-based); a bad JSONL line is
    yielded as a RecordError so that skip mode can count it and go on."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise DataError(
                f"{path}:{err.lineno}: invalid JSON ({err.msg}, column {err.colno}); the file "
                "starts with `[` so it is read as one JSON list: fix the JSON there, or write "
                "one object per line (JSONL)"
            ) from None
        for index, record in enumerate(records):
            yield f"{path}[{index}]", record
        return
    # split("\n"), not splitlines(): JSON strings may hold a raw U+2028, which is no newline.
    for line_no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{path}:{line_no}"
        try:
            yield where, json.loads(line)
        except json.JSONDecodeError as err:
            detail = f"invalid JSON ({err.msg}, column {err.colno}); each line must be one object"
            yield where, RecordError(where, "invalid_json", detail)


def _read_parquet(path: Path) -> Iterator[Raw]:
    import pyarrow
    import pyarrow.parquet

    try:
        rows = pyarrow.parquet.read_table(path).to_pylist()
    except (pyarrow.ArrowException, OSError) as err:
        raise DataError(f"{path}: cannot read it as Parquet ({err})") from None
    for index, row in enumerate(rows):
        yield f"{path} row {index}", row


def _read_csv(path: Path) -> Iterator[Raw]:
    """Rows as strings (no type guessing: an answer column of digits stays text), located
    by the file line where the row starts."""
    # Long replies exceed the csv module's default 128 KiB field limit.
    csv.field_size_limit(2**31 - 1)
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        try:
            columns, last_line = reader.fieldnames, reader.line_num
            for row in reader:
                where = f"{path}:{last_line + 1}"
                last_line = reader.line_num
                if None in row:
                    detail = f"{len(columns or [])} columns in the header but more in this row"
                    yield where, RecordError(where, "unknown_format", detail + "; quote fields")
                else:
                    yield where, row
        except (csv.Error, UnicodeDecodeError) as err:
            raise DataError(f"{path}:{reader.line_num}: cannot read it as CSV ({err})") from None


def _read_saved(path: Path, split: str) -> Iterator[Raw]:
    import datasets

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:  # datasets raises many kinds; all mean "not readable"
        raise DataError(f"{path}: cannot load this saved `datasets` directory ({err})") from None
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"{path}: no split {split!r} (it has {sorted(loaded)}); set `split:` in the "
                "source config"
            )
        loaded = loaded[split]
    for index, row in enumerate(loaded):
        yield f"{path}[{split}] row {index}", row


def _read_hub(source: SourceConfig) -> Iterator[Raw]:
    import datasets

    try:
        loaded = datasets.load_dataset(source.path, source.subset, split=source.split)
    except Exception as err:  # network, auth, unknown name / split / subset, offline mode
        raise DataError(
            f"{source.path}: not a local file or folder, and loading it as a hub data set "
            f"failed ({type(err).__name__}: {err}). Check the path or hub name, the network "
            f"(HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), the split ({source.split!r}) and the "
            f"subset ({source.subset!r}) in the source config"
        ) from None
    for index, row in enumerate(loaded):
        yield f"{source.path}[{source.split}] row {index}", row
