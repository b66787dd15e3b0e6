"""Reading records from files, folders, saved `datasets` directories and the hub, each
with its location (file:line, file[index], file row n) for error messages."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from framework.config.schema import SourceConfig
from framework.data.formats import DataError, RecordError

SUPPORTED = (".jsonl", ".json", ".parquet", ".csv")
# Files that `datasets.save_to_disk` writes (a Dataset, or a DatasetDict at the top level).
_SAVED_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")

# (where, record), or (where, RecordError) for a record that could not even be parsed.
Raw = tuple[str, object]


def read_source(source: SourceConfig) -> Iterator[Raw]:
    """Every record of a file, folder, saved or hub source, with its location string."""
    path = Path(source.path).expanduser()
    if path.is_dir() and any((path / marker).exists() for marker in _SAVED_MARKERS):
        yield from _read_saved(path, source.split)
    elif path.is_dir():
        for file in _files_in(path):
            yield from read_file(file)
    elif path.is_file():
        yield from read_file(path)
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


def read_file(path: Path) -> Iterator[Raw]:
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
