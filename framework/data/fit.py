"""Rendered examples fitted to data.max_seq_len: cut or dropped as data.overlong says,
those with nothing left to train removed, each counted per source."""

from __future__ import annotations

import dataclasses
from collections import Counter

from framework.config.schema import DataConfig
from framework.data.formats import ErrorPolicy, RecordError
from framework.data.render import RenderedExample
from framework.data.sources import LoadedRecord


@dataclasses.dataclass
class Fitted:
    examples: list[tuple[list[int], list[float]]]
    truncated: Counter
    dropped: Counter
    sources: list[str] = dataclasses.field(default_factory=list)  # per kept example


def fit_to_length(
    records: list[LoadedRecord],
    rendered: list[RenderedExample | RecordError],
    cfg: DataConfig,
    policy: ErrorPolicy,
) -> Fitted:
    """Apply data.overlong and drop examples with nothing to train, counting per source."""
    fitted = Fitted([], Counter(), Counter())
    for record, result in zip(records, rendered, strict=True):
        if isinstance(result, RecordError):
            policy(result, record.source)
            continue
        ids, weights = result.input_ids, result.weights
        if len(ids) > cfg.max_seq_len:
            if cfg.overlong == "drop":
                fitted.dropped[record.source] += 1
                continue
            fitted.truncated[record.source] += 1
            ids, weights = ids[: cfg.max_seq_len], weights[: cfg.max_seq_len]
        if not any(w > 0 for w in weights[1:]):
            policy(
                RecordError(record.where, "no_target", "no trained token within data.max_seq_len"),
                record.source,
            )
            continue
        fitted.examples.append((ids, weights))
        fitted.sources.append(record.source)
    return fitted
