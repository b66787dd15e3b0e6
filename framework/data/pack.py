"""Packing plans (which examples share a row) and the collator that builds the rows."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

IGNORE_INDEX = -100


def example_bounds(position_ids: torch.Tensor) -> list[list[int]]:
    """For each row, the offsets where its examples start (position id 0, padding too),
    followed by the row's length."""
    length = position_ids.shape[-1]
    rows = position_ids.reshape(-1, length)
    return [[*torch.nonzero(row == 0).flatten().tolist(), length] for row in rows]


@dataclass
class PackingPlan:
    """Rows of examples: row r holds example_ids[row_offsets[r]:row_offsets[r+1]]."""

    example_ids: np.ndarray  # int64
    row_offsets: np.ndarray  # int64, len = rows + 1

    def __len__(self) -> int:
        return len(self.row_offsets) - 1

    def row(self, index: int) -> np.ndarray:
        return self.example_ids[self.row_offsets[index] : self.row_offsets[index + 1]]

    def row_tokens(self, lengths: np.ndarray) -> np.ndarray:
        """Tokens in each row."""
        example_lengths = lengths[self.example_ids]
        if not len(self):
            return example_lengths
        return np.add.reduceat(example_lengths, self.row_offsets[:-1])

    @classmethod
    def from_rows(cls, rows: list[list[int]] | np.ndarray) -> PackingPlan:
        sizes = [len(r) for r in rows]
        ids = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=sum(sizes))
        return cls(ids, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


class _FreeSpace:
    """Rows grouped by their free slots, for best-fit lookups over at most `capacity`
    distinct values."""

    def __init__(self, capacity: int):
        self.rows: list[list[int]] = [[] for _ in range(capacity + 1)]
        self.count = np.zeros(capacity + 1, dtype=np.int64)

    def tightest(self, need: int) -> int | None:
        """The smallest free space >= need that some row has."""
        found = np.flatnonzero(self.count[need:])
        return int(found[0]) + need if len(found) else None

    def take(self, space: int, n: int) -> list[int]:
        taken = self.rows[space][-n:]
        del self.rows[space][-n:]
        self.count[space] -= n
        return taken

    def put(self, space: int, rows: list[int]) -> None:
        self.rows[space].extend(rows)
        self.count[space] += len(rows)


def best_fit_decreasing(lengths: np.ndarray, capacity: int, seed: int) -> PackingPlan:
    """Longest example first, each into the row with the least free space that holds it.

    Equal lengths are placed in bulk: a row with free space f takes f // length of them
    in a row, exactly as one-at-a-time best fit would, so the cost is O(n log n) for the
    sort plus one O(capacity) scan per (length, free space) pair visited, independent of
    n. Ties and the order of rows depend only on `seed`."""
    if not np.issubdtype(np.asarray(lengths).dtype, np.integer):
        raise ValueError("example lengths must be integers")
    lengths = np.asarray(lengths, dtype=np.int64)
    if len(lengths) and (lengths.max() > capacity or lengths.min() < 1):
        raise ValueError(f"example lengths must be in [1, {capacity}]")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    order = order[np.argsort(-lengths[order], kind="stable")]
    row_of = np.empty(len(lengths), dtype=np.int64)
    free = _FreeSpace(capacity)
    num_rows = 0
    bounds = np.flatnonzero(np.diff(lengths[order])) + 1
    for group in np.split(order, bounds):
        if not len(group):
            continue
        length, placed = int(lengths[group[0]]), 0
        while placed < len(group):
            space = free.tightest(length)
            if space is None:  # open new rows, as many as the rest of the group fills
                per_row = capacity // length
                new = -(-(len(group) - placed) // per_row)
                free.put(capacity, list(range(num_rows, num_rows + new)))
                num_rows += new
                continue
            per_row = space // length
            left = len(group) - placed
            full = min(free.count[space], left // per_row)
            if full:
                rows = free.take(space, full)
                row_of[group[placed : placed + full * per_row]] = np.repeat(rows, per_row)
                placed += full * per_row
                free.put(space - per_row * length, rows)
            elif left:
                (row,) = free.take(space, 1)
                row_of[group[placed:]] = row
                placed = len(group)
                free.put(space - left * length, [row])
    return _plan_from_assignment(row_of, num_rows, rng)


def _plan_from_assignment(row_of: np.ndarray, num_rows: int, rng) -> PackingPlan:
    # Shuffle the rows so an epoch does not go from the longest examples to the shortest.
    relabel = rng.permutation(num_rows)
    row_of = relabel[row_of]
    example_ids = np.argsort(row_of, kind="stable")
    sizes = np.bincount(row_of, minlength=num_rows)
    return PackingPlan(example_ids, np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64))


def length_grouped(lengths: np.ndarray, rows_per_batch: int, seed: int) -> PackingPlan:
    """The unpacked baseline: one example per row; batches of similar lengths (sorted in
    windows of 64 batches) so padding to each batch's longest row wastes little."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    window = rows_per_batch * 64
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        order[start : start + window] = chunk[np.argsort(-lengths[chunk], kind="stable")]
    batches = [order[i : i + rows_per_batch] for i in range(0, len(order), rows_per_batch)]
    shuffled = np.concatenate([batches[i] for i in rng.permutation(len(batches))])
    return PackingPlan(shuffled.astype(np.int64), np.arange(len(shuffled) + 1, dtype=np.int64))


def collate_rows(
    tokens: np.ndarray,
    weights: np.ndarray,
    offsets: np.ndarray,
    rows: list[np.ndarray],
    row_len: int | None,
    pad_id: int,
    per_example: bool = False,
) -> dict[str, torch.Tensor]:
    """Tensors for a micro batch. Position ids restart at every example (and at the
    padding), which is how the model keeps packed examples from attending to each other;
    the first label of every example is IGNORE_INDEX so no label crosses a boundary
    (attention kernels find the examples from the position ids). `row_len=None` pads to
    the longest row of the batch. With `per_example`, each example's loss weights are
    scaled to sum to 1, so a weighted sum over the global batch divided by the sum of
    weights is the mean over examples of each example's mean loss."""
    lengths = [offsets[row + 1] - offsets[row] for row in rows]
    width = row_len or int(max(int(n.sum()) for n in lengths))
    input_ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    loss_weights = np.zeros((len(rows), width), dtype=np.float32)
    position_ids = np.zeros((len(rows), width), dtype=np.int64)
    for r, row in enumerate(rows):
        cursor = 0
        for index in row:
            start, end = offsets[index], offsets[index + 1]
            span = slice(cursor, cursor + end - start)
            ids, w = tokens[start:end], weights[start:end].copy()
            w[0] = 0.0
            if per_example and w.sum() > 0:
                w /= w.sum()
            input_ids[r, span] = ids
            labels[r, span] = np.where(w > 0, ids, IGNORE_INDEX)
            loss_weights[r, span] = w
            labels[r, cursor] = IGNORE_INDEX
            position_ids[r, span] = np.arange(end - start)
            cursor += end - start
        position_ids[r, cursor:] = np.arange(width - cursor)
    return {
        "input_ids": torch.from_numpy(input_ids),
        "labels": torch.from_numpy(labels),
        "loss_weights": torch.from_numpy(loss_weights),
        "position_ids": torch.from_numpy(position_ids),
        "num_tokens": torch.tensor([int(n.sum()) for n in lengths]),
        # Attention work grows with each example's length squared (for MFU).
        "sum_sq_lengths": torch.tensor([int((n.astype(np.int64) ** 2).sum()) for n in lengths]),
    }
