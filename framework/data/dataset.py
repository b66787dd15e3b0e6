"""Tokenized examples stored flat in one .npz: built once on the driver, read by every worker."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from transformers import PreTrainedTokenizerBase

from framework.data.render import RenderedExample, render_example


@dataclass
class BuildStats:
    records: int = 0
    truncated: int = 0
    dropped_no_target: int = 0
    kept_tokens: int = 0
    trained_tokens: int = 0

    def summary(self) -> str:
        return (
            f"{self.records} records -> {self.records - self.dropped_no_target} examples, "
            f"{self.kept_tokens} tokens ({self.trained_tokens} trained); "
            f"{self.truncated} truncated to data.max_seq_len, "
            f"{self.dropped_no_target} dropped (no reply token left after truncation)"
        )


@dataclass
class TokenizedDataset:
    tokens: np.ndarray  # int32, all examples back to back
    loss_mask: np.ndarray  # bool, same length as tokens
    offsets: np.ndarray  # int64, example i is tokens[offsets[i]:offsets[i+1]]
    stats: BuildStats = field(default_factory=BuildStats)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        span = slice(self.offsets[index], self.offsets[index + 1])
        return self.tokens[span], self.loss_mask[span]

    def save(self, path: str) -> None:
        np.savez(path, tokens=self.tokens, loss_mask=self.loss_mask, offsets=self.offsets)

    @classmethod
    def load(cls, path: str) -> TokenizedDataset:
        arrays = np.load(path)
        return cls(arrays["tokens"], arrays["loss_mask"], arrays["offsets"])


def tokenize_conversations(
    conversations: Iterable[tuple[str, list[dict]]],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_len: int,
) -> TokenizedDataset:
    """Render every (location, messages) pair; over-long ones keep their first tokens."""
    stats = BuildStats()
    examples: list[RenderedExample] = []
    for where, messages in conversations:
        stats.records += 1
        example = render_example(tokenizer, messages, where)
        if len(example.input_ids) > max_seq_len:
            stats.truncated += 1
            example.input_ids = example.input_ids[:max_seq_len]
            example.loss_mask = example.loss_mask[:max_seq_len]
        if not any(example.loss_mask):
            stats.dropped_no_target += 1
            continue
        examples.append(example)
    tokens = np.fromiter((t for e in examples for t in e.input_ids), dtype=np.int32)
    loss_mask = np.fromiter((m for e in examples for m in e.loss_mask), dtype=bool)
    offsets = np.zeros(len(examples) + 1, dtype=np.int64)
    np.cumsum([len(e.input_ids) for e in examples], out=offsets[1:])
    stats.kept_tokens, stats.trained_tokens = len(tokens), int(loss_mask.sum())
    return TokenizedDataset(tokens, loss_mask, offsets, stats)
