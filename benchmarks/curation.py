"""Curation throughput and memory, and how well near duplicates are found.

Run from the repository root:

    python benchmarks/curation.py              # 1M records, then the mapper comparison
    python benchmarks/curation.py --quick      # 20k records, a minute

A synthetic two-source mixture (words drawn by their frequency in the shared alpaca
file) with planted exact duplicates, near-duplicate pairs over a range of Jaccard
similarities, suite test prompts and broken replies. Writes three markdown tables to its
results page (--out) and stdout:

1. the whole curation stage (every default filter plus MinHash near duplicates) on all
   the records, through local processes: records/s and peak memory;
2. the recall and precision of near-duplicate removal by the planted pairs' true Jaccard;
3. curation and tokenizing through each Mapper on a smaller slice: 1 and 2 local
   processes, Ray tasks on 1 and 2 CPUs.

Memory is the peak resident size summed over the process tree (shared pages counted in
each process), sampled every 0.2 s.
"""

from __future__ import annotations

import collections
import contextlib
import re
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from benchmarks.common import arg_parser, progress, write_results_page  # noqa: E402
from framework.cluster.ray_preprocess import ray_mapper  # noqa: E402
from framework.config.schema import CurateConfig, SuiteConfig  # noqa: E402
from framework.data.cache import render_all  # noqa: E402
from framework.data.curate.decontam import EvalIndex  # noqa: E402
from framework.data.curate.dedup import jaccard, shingles  # noqa: E402
from framework.data.curate.references import suite_texts  # noqa: E402
from framework.data.curate.stage import curate  # noqa: E402
from framework.data.curate.text import record_text  # noqa: E402
from framework.data.formats import Conversation  # noqa: E402
from framework.data.parallel import LocalMapper  # noqa: E402
from framework.data.sources import LoadedRecord  # noqa: E402
from framework.model.tokenizer import train_bpe  # noqa: E402

ALPACA = ROOT.parent / "shared" / "data" / "alpaca_en_demo.json"
SOURCES = (("web", 1.0, 0.6), ("curated", 2.0, 0.4))  # name, weight, share of records
PLANTED = {"duplicate": 0.01, "near_pair": 0.002, "contaminated": 0.001, "broken": 0.002}
BUCKETS = ((0.0, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 1.0))
CURATE = CurateConfig(near=True)
SEED = 0


# --------------------------------------------------------------------------- the mixture


@dataclass
class Mixture:
    sources: list[tuple[str, float, list[LoadedRecord]]]
    near_pairs: list[tuple[str, str, float]]  # (base, copy, true Jaccard) by `where`
    planted: collections.Counter


def _record(source: str, number: int, prompt: str, reply: str) -> LoadedRecord:
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    return LoadedRecord(source, f"#{number}", Conversation(messages))


class _Words:
    """Random texts with alpaca's word frequencies."""

    def __init__(self, rng: np.random.Generator):
        counts = collections.Counter(re.findall(r"[a-z]+", ALPACA.read_text().lower()))
        self.vocab = np.array(list(counts))
        frequency = np.array(list(counts.values()), dtype=float)
        self.p = frequency / frequency.sum()
        self.rng = rng

    def text(self, low: int, high: int) -> str:
        n = int(self.rng.integers(low, high))
        return " ".join(self.rng.choice(self.vocab, n, p=self.p))

    def edited(self, text: str, share: float) -> str:
        """`text` with `share` of its words (at least one) replaced at random places."""
        words = text.split()
        changes = max(1, round(share * len(words)))
        for place in self.rng.choice(len(words), changes, replace=False):
            words[place] = str(self.rng.choice(self.vocab, p=self.p))
        return " ".join(words)


def _content_jaccard(a: LoadedRecord, b: LoadedRecord) -> float:
    text_a, text_b = (record_text(r.conversation).content for r in (a, b))
    return jaccard(shingles(text_a, CURATE.near_ngram), shingles(text_b, CURATE.near_ngram))


def mixture(total: int) -> Mixture:
    """`total` records over SOURCES; the planted kinds are the shares in PLANTED."""
    rng = np.random.default_rng(SEED)
    words = _Words(rng)
    suite = [t.text for t in suite_texts(SuiteConfig(), CURATE.suite_items_per_family)]
    suite = [t for t in suite if len(t.split()) >= CURATE.decontaminate_min_words]
    records, near_pairs, planted = [], [], collections.Counter()
    kinds = [*PLANTED, "plain"]
    shares = [*PLANTED.values(), 1 - sum(PLANTED.values())]
    while len(records) < total:
        n = len(records)
        source = SOURCES[int(rng.random() > SOURCES[0][2])][0]
        kind = str(rng.choice(kinds, p=shares)) if n else "plain"
        if kind == "duplicate":  # another source's or the same, in other case and spacing
            base = records[int(rng.integers(n))].conversation.messages
            prompt, reply = base[0]["content"].upper(), base[1]["content"] + "  "
        elif kind == "contaminated":
            prompt, reply = str(rng.choice(suite)), words.text(20, 120)
        elif kind == "broken":  # an empty reply or one sentence looped
            prompt, reply = words.text(8, 40), " ".join([words.text(6, 7) + "."] * 8)
            reply = reply if rng.random() < 0.5 else "  "
        else:
            prompt, reply = words.text(8, 40), words.text(20, 200)
        records.append(_record(source, n, prompt, reply))
        planted[kind] += 1
        if kind == "near_pair" and len(records) < total:
            copy = _record(source, n + 1, prompt, words.edited(reply, rng.uniform(0, 0.06)))
            records.append(copy)
            near_pairs.append((f"#{n}", f"#{n + 1}", _content_jaccard(records[-2], copy)))
    by_source = [
        (name, weight, [r for r in records if r.source == name]) for name, weight, _ in SOURCES
    ]
    return Mixture(by_source, near_pairs, planted)


# --------------------------------------------------------------------------- measuring


class PeakMemory:
    """The largest resident size of this process and all its descendants, sampled."""

    def __init__(self, every: float = 0.2):
        self.every, self.peak, self._stop = every, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for process in [me, *me.children(recursive=True)]:
                # a process may end between listing and reading
                with contextlib.suppress(psutil.Error):
                    total += process.memory_info().rss
            self.peak = max(self.peak, total)
            self._stop.wait(self.every)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _index() -> EvalIndex:
    texts = suite_texts(SuiteConfig(), CURATE.suite_items_per_family)
    return EvalIndex.build(texts, CURATE.decontaminate_ngram, CURATE.decontaminate_min_words)


def timed_curation(mix: Mixture, mapper) -> tuple[float, int, list]:
    """(seconds, peak bytes, removals) of one curation pass."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        _, removals = curate(mix.sources, _index(), CURATE, mapper, pairs=False)
        seconds = time.perf_counter() - start
    return seconds, memory.peak, removals


def _slice(mix: Mixture, total: int) -> Mixture:
    share = total / sum(len(r) for _, _, r in mix.sources)
    sources = [(n, w, r[: int(len(r) * share)]) for n, w, r in mix.sources]
    return replace(mix, sources=sources)


def mapper_rows(mix: Mixture) -> list[str]:
    """Curation, then tokenizing the kept records, through each Mapper."""
    records = [r for _, _, rs in mix.sources for r in rs]
    tokenizer = train_bpe(
        [m["content"] for r in records[:5000] for m in r.conversation.messages], vocab_size=8000
    )
    rows = []
    for name, mapper in _mappers():
        with mapper as run:
            curation_s, peak, removals = timed_curation(mix, run)
            start = time.perf_counter()
            render_all(records, tokenizer, "assistant", run)
            render_s = time.perf_counter() - start
        rows.append(
            f"| {name} | {len(records) / curation_s:,.0f} | {len(records) / render_s:,.0f} "
            f"| {peak / 2**30:.2f} | {len(removals):,} |"
        )
        progress(rows[-1])
    return rows


class _Local:
    def __init__(self, num_proc: int):
        self.mapper = LocalMapper(num_proc)

    def __enter__(self):
        return self.mapper

    def __exit__(self, *exc):
        return None


def _mappers():
    yield "local, 1 process", _Local(1)
    yield "local, 2 processes", _Local(2)
    yield "Ray tasks, 1 CPU", ray_mapper(None, num_cpus=1)
    yield "Ray tasks, 2 CPUs", ray_mapper(None, num_cpus=2)


def recall_rows(mix: Mixture, removals: list) -> list[str]:
    """Per Jaccard bucket: planted pairs, how many had one side removed as a near
    duplicate of the other, and what share of them should have been (>= threshold)."""
    found = {(r.where, r.match.split()[-1]) for r in removals if r.reason == "near_duplicate"}
    rows = []
    for low, high in BUCKETS:
        pairs = [
            (a, b) for a, b, j in mix.near_pairs if low <= j < high or (high == 1.0 and j == 1.0)
        ]
        removed = sum((b, a) in found or (a, b) in found for a, b in pairs)
        expected = "all" if low >= CURATE.near_threshold else "none"
        share = f"{removed / len(pairs):.3f}" if pairs else "-"
        rows.append(
            f"| [{low:.2f}, {high:.2f}) | {len(pairs):,} | {removed:,} | {share} | {expected} |"
        )
    planted = {(b, a) for a, b, _ in mix.near_pairs} | {(a, b) for a, b, _ in mix.near_pairs}
    true = sum(pair in planted for pair in found)
    rows.append(
        f"\nprecision: {true:,} of {len(found):,} near-duplicate removals are planted pairs"
    )
    rows.append(_unplanted_line(mix, [pair for pair in found if pair not in planted]))
    return rows


def _unplanted_line(mix: Mixture, pairs: list[tuple[str, str]]) -> str:
    """The true Jaccard of the removals that match no planted pair (an exact copy of a
    pair's side can stand in for it, when the copy is the one exact dedup keeps)."""
    by_where = {r.where: r for _, _, rs in mix.sources for r in rs}
    similar = sorted(_content_jaccard(by_where[a], by_where[b]) for a, b in pairs)
    above = sum(j >= CURATE.near_threshold for j in similar)
    return (
        f"the other {len(pairs):,}: {above:,} have true Jaccard >= {CURATE.near_threshold} "
        f"(all: {', '.join(f'{j:.2f}' for j in similar)})"
    )


def main() -> None:
    parser = arg_parser(__doc__, "curation", "20k records, and a 5k-record mapper comparison")
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--compare", type=int, default=50_000, help="records per mapper")
    args = parser.parse_args()
    total = 20_000 if args.quick else args.records
    compare = 5_000 if args.quick else args.compare
    start = time.perf_counter()
    mix = mixture(total)
    progress(f"built {total:,} records in {time.perf_counter() - start:.0f} s")
    seconds, peak, removals = timed_curation(mix, LocalMapper(2))
    reasons = collections.Counter(r.reason for r in removals)
    body = [
        f"A synthetic mixture of {total:,} records over the sources {[s[0] for s in SOURCES]}, "
        f"planted: {dict(mix.planted)}. Wall times.",
        "",
        f"## Curation of {total:,} records, 2 local processes",
        "",
        "| records | seconds | records/s | peak memory (GiB) | removed by reason |",
        "|---:|---:|---:|---:|---|",
        f"| {total:,} | {seconds:.0f} | {total / seconds:,.0f} | {peak / 2**30:.2f} "
        f"| {dict(reasons)} |",
        "",
        "## Near duplicates by the planted pair's true Jaccard (threshold "
        f"{CURATE.near_threshold}, {CURATE.near_num_perm} permutations)",
        "",
        "| true Jaccard | pairs | one side removed | share | should be |",
        "|---|---:|---:|---:|---|",
        *recall_rows(mix, removals),
        "",
        f"## Each Mapper on {compare:,} of the records",
        "",
        "| mapper | curation records/s | tokenizing records/s | peak memory (GiB) | removed |",
        "|---|---:|---:|---:|---:|",
        *mapper_rows(_slice(mix, compare)),
    ]
    write_results_page(args.out, "Curation: throughput, memory and near duplicates", body)


if __name__ == "__main__":
    main()
