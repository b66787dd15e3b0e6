"""Micro batches for one data-parallel rank: a new packing plan every epoch, sharded so
that every rank gets the same number of micro batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from framework.data.dataset import TokenizedDataset
from framework.data.formats import DataError
from framework.data.pack import best_fit_decreasing, collate_rows, one_per_row


def epoch_rows(
    dataset: TokenizedDataset, *, packing: bool, max_seq_len: int, seed: int
) -> list[list[int]]:
    """The rows of one epoch, in order, for all ranks (identical on every rank)."""
    if packing:
        return best_fit_decreasing(dataset.lengths(), max_seq_len, seed)
    return one_per_row(len(dataset), seed)


def micro_batches_per_rank(num_rows: int, micro_batch_size: int, world_size: int) -> int:
    """Whole micro batches each rank gets from `num_rows` rows; at least one, or DataError."""
    per_rank = num_rows // (micro_batch_size * world_size)
    if per_rank == 0:
        raise DataError(
            f"the data fills {num_rows} rows, fewer than one micro batch for each of "
            f"{world_size} workers at trainer.micro_batch_size={micro_batch_size}; add data, "
            "lower trainer.micro_batch_size or cluster.num_workers, or lower data.max_seq_len"
        )
    return per_rank


@dataclass
class RankBatches:
    dataset: TokenizedDataset
    max_seq_len: int
    packing: bool
    micro_batch_size: int
    rank: int
    world_size: int
    seed: int
    pad_id: int

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        rows = epoch_rows(
            self.dataset, packing=self.packing, max_seq_len=self.max_seq_len, seed=self.seed + epoch
        )
        # Rows beyond a whole number of global micro batches wait for a later epoch's
        # reshuffle; a rank that got an extra batch would leave the others hanging.
        per_rank = micro_batches_per_rank(len(rows), self.micro_batch_size, self.world_size)
        mine = rows[self.rank :: self.world_size][: per_rank * self.micro_batch_size]
        row_len = self.max_seq_len if self.packing else None
        for start in range(0, len(mine), self.micro_batch_size):
            chunk = mine[start : start + self.micro_batch_size]
            yield collate_rows(self.dataset, chunk, row_len, self.pad_id)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        epoch = 0
        while True:
            yield from self.epoch(epoch)
            epoch += 1
