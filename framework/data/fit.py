"""Rendered examples fitted to data.max_seq_len: cut or dropped as data.overlong says,
those with nothing left to train removed, each counted per source. A preference pair is
fitted as one unit: its two sequences share a row.

An example that truncation leaves with no trained token (its replies all lie past
data.max_seq_len) is skipped and counted as `no_target` whatever data.on_error says: the
record is sound, the row is too short for it. One with no trained token before any cut
goes to data.on_error like any other bad record."""

from __future__ import annotations

import dataclasses
from collections import Counter

from framework.config.schema import DataConfig
from framework.data.formats import ErrorPolicy, RecordError
from framework.data.preference import RenderedPair, fitted_lengths
from framework.data.render import RenderedExample
from framework.data.sources import LoadedRecord


@dataclasses.dataclass
class Fitted:
    examples: list[tuple[list[int], list[float]]]
    truncated: Counter
    dropped: Counter
    sources: list[str] = dataclasses.field(default_factory=list)  # per kept example


Example = tuple[list[int], list[float]]


def _sequences(result: RenderedExample | RenderedPair) -> list[Example]:
    if isinstance(result, RenderedPair):
        return [(r.input_ids, r.weights) for r in (result.chosen, result.rejected)]
    return [(result.input_ids, result.weights)]


def _limits(lengths: list[int], max_len: int) -> list[int]:
    """The length each sequence is cut to: a pair's two share one row."""
    if len(lengths) == 2:
        return list(fitted_lengths(*lengths, max_len))
    return [min(lengths[0], max_len)]


def fit_to_length(
    records: list[LoadedRecord],
    rendered: list[RenderedExample | RenderedPair | RecordError],
    cfg: DataConfig,
    policy: ErrorPolicy,
) -> Fitted:
    """Apply data.overlong and drop examples (pairs: either sequence) with nothing to
    train, counting per source."""
    fitted = Fitted([], Counter(), Counter())
    for record, result in zip(records, rendered, strict=True):
        if isinstance(result, RecordError):
            policy(result, record.source)
            continue
        sequences = _sequences(result)
        lengths = [len(ids) for ids, _ in sequences]
        cut = sum(lengths) > cfg.max_seq_len
        if cut:
            if cfg.overlong == "drop":
                fitted.dropped[record.source] += 1
                continue
            fitted.truncated[record.source] += 1
            limits = _limits(lengths, cfg.max_seq_len)
            sequences = [(ids[:n], w[:n]) for (ids, w), n in zip(sequences, limits, strict=True)]
        if not all(any(w > 0 for w in weights[1:]) for _, weights in sequences):
            if cut:  # counted, never fatal: the row is too short, not the record bad
                detail = f"no trained token within data.max_seq_len={cfg.max_seq_len}"
                policy.count(RecordError(record.where, "no_target", detail), record.source)
            else:
                policy(RecordError(record.where, "no_target", "no trained token"), record.source)
            continue
        fitted.examples += sequences
        fitted.sources += [record.source] * len(sequences)
    return fitted
