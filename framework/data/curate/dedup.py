"""Duplicates: exact (normalised text) and near (MinHash LSH over word shingles, each
candidate confirmed by its true Jaccard similarity). Records arrive in priority order and
the first of each group is kept, so the rule a user reads in the stats is the rule run:
the higher-weighted source, then the earlier source in the config, then the earlier
record."""

from __future__ import annotations

import functools

import numpy as np
from datasketch import MinHash, MinHashLSH

from framework.data.curate.text import ngrams, words

# Fixed, not the run's seed: which records are near duplicates is a property of the data.
_MINHASH = {"seed": 1, "scheme": "affine32"}
# LSH bands tuned for recall (datasketch's false-positive / false-negative weights): a
# false candidate costs one exact Jaccard check, a missed pair stays in the data. At
# threshold 0.8 with 128 permutations: 16 bands of 8, a pair at Jaccard 0.85 becomes a
# candidate with probability 0.994 (0.686 with the default equal weights).
_LSH_WEIGHTS = (0.05, 0.95)


def shingles(text: str, n: int) -> set[tuple[str, ...]]:
    return ngrams(words(text), n)


@functools.cache
def _permutations(num_perm: int) -> tuple:
    """Drawn once per process: datasketch draws them again for every MinHash it builds,
    which cost a third of curation's time."""
    return MinHash(num_perm=num_perm, **_MINHASH).permutations


def _minhash(num_perm: int, hashvalues: np.ndarray | None = None) -> MinHash:
    return MinHash(
        num_perm, hashvalues=hashvalues, permutations=_permutations(num_perm), **_MINHASH
    )


def signature(text: str, n: int, num_perm: int) -> np.ndarray:
    """The MinHash of `text`'s word n-gram set (datasketch, SHA-1 of each shingle)."""
    minhash = _minhash(num_perm)
    minhash.update_batch([" ".join(gram).encode() for gram in shingles(text, n)])
    return minhash.hashvalues


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class ExactIndex:
    """The first record seen with each key."""

    def __init__(self):
        self.first: dict[str, int] = {}

    def add(self, key: str, index: int) -> int | None:
        """The earlier record with this key (this one is then a duplicate), else None."""
        earlier = self.first.setdefault(key, index)
        return None if earlier == index else earlier


class NearIndex:
    """Kept records' MinHashes in an LSH index; `add` returns the kept record a new one
    nearly duplicates (Jaccard of shingle sets >= threshold), or None and keeps it."""

    def __init__(self, threshold: float, n: int, num_perm: int):
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm, weights=_LSH_WEIGHTS)
        self.threshold, self.n, self.num_perm = threshold, n, num_perm
        self.texts: dict[int, str] = {}

    def add(self, index: int, text: str, hashvalues: np.ndarray) -> tuple[int, float] | None:
        minhash = _minhash(self.num_perm, hashvalues)
        candidates = sorted(self.lsh.query(minhash))
        if candidates:
            mine = shingles(text, self.n)
            for candidate in candidates:
                similarity = jaccard(mine, shingles(self.texts[candidate], self.n))
                if similarity >= self.threshold:
                    return candidate, similarity
        self.lsh.insert(index, minhash)
        self.texts[index] = text
        return None
