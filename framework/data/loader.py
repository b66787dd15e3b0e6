"""Micro batches for one data-parallel rank: a new packing plan every epoch, sharded so
that every rank gets the same number of micro batches."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from framework.data.dataset import TokenizedDataset
from framework.data.pack import best_fit_decreasing, collate_rows, one_per_row


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

    def epoch_rows(self, epoch: int) -> list[list[int]]:
        """The rows of one epoch, in order, for all ranks (identical on every rank)."""
        seed = self.seed + epoch
        if self.packing:
            return best_fit_decreasing(self.dataset.lengths(), self.max_seq_len, seed)
        return one_per_row(len(self.dataset), seed)

    def batches_per_epoch(self) -> int:
        rows = len(self.epoch_rows(0))
        return rows // (self.micro_batch_size * self.world_size)

    def epoch(self, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        # Rows beyond a whole number of global micro batches wait for a later epoch's
        # reshuffle; a rank that got an extra batch would leave the others hanging.
        rows = self.epoch_rows(epoch)
        per_rank = len(rows) // (self.micro_batch_size * self.world_size)
        if per_rank == 0:
            raise ValueError(
                f"{len(rows)} rows cannot fill one micro batch on each of {self.world_size} "
                f"ranks at trainer.micro_batch_size={self.micro_batch_size}; add data or "
                "lower the batch size"
            )
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
