"""Packing plans (which examples share a row) and the collator that builds the rows."""

from __future__ import annotations

import bisect

import numpy as np
import torch

from framework.data.dataset import TokenizedDataset

IGNORE_INDEX = -100


def best_fit_decreasing(lengths: np.ndarray, capacity: int, seed: int) -> list[list[int]]:
    """Group example indices into rows of at most `capacity` tokens, longest first, each
    into the fullest row it still fits. Ties and the order of rows depend only on `seed`."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free slots, row index), sorted
    for index in order.tolist():
        need = int(lengths[index])
        pos = bisect.bisect_left(free, (need, -1))
        if pos == len(free):
            rows.append([index])
            bisect.insort(free, (capacity - need, len(rows) - 1))
            continue
        space, row = free.pop(pos)
        rows[row].append(index)
        bisect.insort(free, (space - need, row))
    return [rows[i] for i in rng.permutation(len(rows)).tolist()]


def one_per_row(num_examples: int, seed: int) -> list[list[int]]:
    """The unpacked baseline: every example alone in its row, in a seeded order."""
    return [[i] for i in np.random.default_rng(seed).permutation(num_examples).tolist()]


def collate_rows(
    dataset: TokenizedDataset, rows: list[list[int]], row_len: int | None, pad_id: int
) -> dict[str, torch.Tensor]:
    """Tensors for a micro batch. Position ids restart at every example (and at the
    padding), which is how the model keeps packed examples from attending to each other;
    the first label of every example is IGNORE_INDEX so no label crosses a boundary.
    `row_len=None` pads to the longest row of the batch."""
    lengths = dataset.lengths()
    width = row_len or max(int(lengths[row].sum()) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        cursor = 0
        for index in row:
            tokens, mask = dataset.example(index)
            end = cursor + len(tokens)
            ids = torch.from_numpy(tokens.astype(np.int64))
            input_ids[r, cursor:end] = ids
            labels[r, cursor:end] = torch.where(torch.from_numpy(mask), ids, IGNORE_INDEX)
            labels[r, cursor] = IGNORE_INDEX
            position_ids[r, cursor:end] = torch.arange(len(tokens))
            cursor = end
        position_ids[r, cursor:] = torch.arange(width - cursor)
    num_tokens = torch.tensor([int(lengths[row].sum()) for row in rows])
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "num_tokens": num_tokens,
    }
