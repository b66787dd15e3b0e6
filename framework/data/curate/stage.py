"""The curation stage: after mixing, before rendering. Per-record checks (quality,
contamination, keys, MinHash signatures) run in parallel through a Mapper; the decisions
that compare records run here, in priority order, so the result is the same whatever
ran the checks. Every removal is kept as a Removal: nothing leaves silently."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from framework.config.schema import CurateConfig
from framework.data.curate.decontam import EvalIndex, contamination
from framework.data.curate.dedup import ExactIndex, NearIndex, signature
from framework.data.curate.quality import quality_reason
from framework.data.curate.text import RecordText, normalise, record_text
from framework.data.parallel import Mapper

# In the order they are applied; a record removed for one is not judged by the later.
REASONS = (
    "empty_reply",
    "repeats_prompt",
    "repetitive",
    "short_reply",
    "long_reply",
    "contaminated",
    "duplicate",
    "duplicate_prompt",
    "near_duplicate",
)
_PREVIEW = 300


@dataclass
class Removal:
    source: str
    where: str
    reason: str
    detail: str
    match: str | None  # the kept record it duplicates, or the eval text it overlaps
    text: str  # the start of the record's prompt and replies

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Checked:
    text: RecordText
    problem: tuple[str, str] | None  # a quality reason and its detail
    overlap: tuple[str, str] | None  # (prompt | reply, eval text label)
    signature: np.ndarray | None


def _check_chunk(records: list, shared: tuple) -> list[_Checked]:
    cfg, index, pairs = shared
    checked = []
    for record in records:
        text = record_text(record.conversation)
        checked.append(
            _Checked(
                text,
                quality_reason(text, cfg, pairs) if cfg.quality else None,
                contamination(text, index) if index is not None else None,
                signature(text.content, cfg.near_ngram, cfg.near_num_perm) if cfg.near else None,
            )
        )
    return checked


class _Judge:
    """Decides, record by record in priority order, whether each stays."""

    def __init__(self, cfg: CurateConfig):
        self.cfg = cfg
        self.exact, self.prompts = ExactIndex(), ExactIndex()
        self.near = NearIndex(cfg.near_threshold, cfg.near_ngram, cfg.near_num_perm)

    def __call__(self, i: int, checked: _Checked, where: list[str]):
        """(reason, detail, match) for a removed record, None for a kept one."""
        if checked.problem is not None:
            return (*checked.problem, None)
        if checked.overlap is not None:
            part, label = checked.overlap
            n = self.cfg.decontaminate_ngram
            return "contaminated", f"its {part} shares a {n}-gram (or all) of", label
        text = checked.text
        if self.cfg.exact and (earlier := self.exact.add(text.exact_key, i)) is not None:
            return "duplicate", "the same conversation as", where[earlier]
        prompt = normalise(text.prompt)
        if (
            self.cfg.exact_prompt
            and prompt
            and (earlier := self.prompts.add(prompt, i)) is not None
        ):
            return "duplicate_prompt", "the same prompt as", where[earlier]
        if self.cfg.near and (found := self.near.add(i, text.content, checked.signature)):
            earlier, similarity = found
            return "near_duplicate", f"Jaccard {similarity:.2f} with", where[earlier]
        return None


def curate(
    sources: list[tuple[str, float, list]],
    index: EvalIndex | None,
    cfg: CurateConfig,
    mapper: Mapper,
    pairs: bool,
) -> tuple[dict[str, list], list[Removal]]:
    """`sources` as (name, weight, records). Returns each source's kept records in
    reading order, and the removals in priority order: sources by weight (higher first),
    then config order; records in reading order."""
    order = sorted(range(len(sources)), key=lambda s: (-sources[s][1], s))
    flat = [record for s in order for record in sources[s][2]]
    checked = mapper(_check_chunk, flat, (cfg, index, pairs), "curating")
    where = [f"{record.source} {record.where}" for record in flat]
    judge = _Judge(cfg)
    kept: dict[str, list] = {name: [] for name, _, _ in sources}
    removals = []
    for i, (record, found) in enumerate(zip(flat, checked, strict=True)):
        verdict = judge(i, found, where)
        if verdict is None:
            kept[record.source].append(record)
            continue
        reason, detail, match = verdict
        preview = found.text.content.strip()[:_PREVIEW]
        removals.append(Removal(record.source, record.where, reason, detail, match, preview))
    return kept, removals


def removal_counts(removals: list[Removal]) -> dict[str, dict[str, int]]:
    """source -> reason -> how many, reasons in REASONS order."""
    counts: dict[str, dict[str, int]] = {}
    for removal in removals:
        per_source = counts.setdefault(removal.source, {})
        per_source[removal.reason] = per_source.get(removal.reason, 0) + 1
    return {
        source: {r: found[r] for r in REASONS if r in found} for source, found in counts.items()
    }
