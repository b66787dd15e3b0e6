"""Tokenized examples stored flat as .npy files that workers memory-map."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

_FIELDS = ("tokens", "weights", "offsets")


@dataclass
class TokenizedDataset:
    tokens: np.ndarray  # int32, every example back to back
    weights: np.ndarray  # float32 loss weight per token, 0 = not trained
    offsets: np.ndarray  # int64, example i is tokens[offsets[i]:offsets[i+1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(self.offsets[index], self.offsets[index + 1])
        return self.tokens[span], self.weights[span]

    def save(self, directory: str | Path, prefix: str) -> None:
        for name in _FIELDS:
            np.save(Path(directory) / f"{prefix}_{name}.npy", getattr(self, name))

    @classmethod
    def load(cls, directory: str | Path, prefix: str) -> TokenizedDataset:
        """Memory-mapped: every worker on a node shares the same pages."""
        arrays = [np.load(Path(directory) / f"{prefix}_{n}.npy", mmap_mode="r") for n in _FIELDS]
        return cls(*arrays)

    @classmethod
    def from_examples(cls, examples: list[tuple[list[int], list[float]]]) -> TokenizedDataset:
        sizes = [len(ids) for ids, _ in examples]
        total = sum(sizes)
        tokens = np.fromiter((t for ids, _ in examples for t in ids), np.int32, count=total)
        weights = np.fromiter((w for _, ws in examples for w in ws), np.float32, count=total)
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return cls(tokens, weights, offsets)
