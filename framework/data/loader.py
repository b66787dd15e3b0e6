"""Micro batches for one data-parallel rank.

Every epoch gets a new packing plan from the seed. Its rows are dealt out one micro step
at a time: the world_size x micro_batch_size rows of a micro step go to ranks so that each
rank gets exactly micro_batch_size rows and about the same work (longest-processing-time
first on tokens plus attention cost), so no rank waits for another and none runs out early.
The position (epoch, rows handed out) is the sampler state that checkpoints save.

Preference pairs are planned as units (a pair's two sequences share a row) and their
micro batches carry the pair fields of framework/data/preference.py, with the reference
log-probabilities of their pairs when those were precomputed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from framework.config.schema import ConfigError, TrainConfig
from framework.data.cache import first_plan
from framework.data.dataset import TokenizedDataset
from framework.data.formats import DataError
from framework.data.pack import PackingPlan, best_fit_decreasing, collate_rows, length_grouped
from framework.data.preference import pair_fields, pair_lengths, sequence_plan


def epoch_plan(
    lengths: np.ndarray, *, packing: bool, max_seq_len: int, rows_per_batch: int, seed: int
) -> PackingPlan:
    """The rows of one epoch, identical on every rank."""
    if packing:
        return best_fit_decreasing(lengths, max_seq_len, seed)
    return length_grouped(lengths, rows_per_batch, seed)


def micro_steps_per_epoch(num_rows: int, micro_batch_size: int, world_size: int) -> int:
    """Whole micro steps (one micro batch on every rank) in `num_rows` rows; at least one."""
    steps = num_rows // (micro_batch_size * world_size)
    if steps == 0:
        raise DataError(
            f"the data fills {num_rows} rows, fewer than one micro batch for each of "
            f"{world_size} workers at trainer.micro_batch_size={micro_batch_size}; add data, "
            "lower trainer.micro_batch_size or cluster.num_workers, or lower data.max_seq_len"
        )
    return steps


def row_costs(plan: PackingPlan, lengths: np.ndarray, max_seq_len: int) -> np.ndarray:
    """Work per row: its tokens plus attention cost (sum of squared example lengths), the
    latter scaled so that one full-length example costs as much in attention as in tokens."""
    example_lengths = lengths[plan.example_ids].astype(np.float64)
    starts = plan.row_offsets[:-1]
    tokens = np.add.reduceat(example_lengths, starts)
    attention = np.add.reduceat(example_lengths**2, starts) / max_seq_len
    return tokens + attention


def deal_rows(costs: np.ndarray, world_size: int, per_rank: int) -> np.ndarray:
    """Rank of each of world_size x per_rank rows: costliest first, each to the least
    loaded rank that still has room. Deterministic."""
    load = np.zeros(world_size)
    room = np.full(world_size, per_rank)
    ranks = np.empty(len(costs), dtype=np.int64)
    for index in np.argsort(-costs, kind="stable"):
        open_ranks = np.flatnonzero(room)
        rank = open_ranks[np.argmin(load[open_ranks])]
        ranks[index] = rank
        load[rank] += costs[index]
        room[rank] -= 1
    return ranks


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
    per_example: bool = False  # weights that make the loss a mean over examples
    # The artifact's stored plan for epoch 0, equal to what `plan(0)` computes.
    first_plan: PackingPlan | None = None
    pairs: bool = False  # examples 2i, 2i + 1 are pair i's chosen and rejected sequences
    # Pair i's reference log-probabilities (chosen, rejected), when precomputed.
    reference: np.ndarray | None = None
    epoch: int = 0
    micro_step: int = 0  # micro steps of `epoch` already handed out

    def state_dict(self) -> dict[str, int]:
        # Rows rather than micro steps: the position then holds for any number of ranks.
        group = self.micro_batch_size * self.world_size
        return {"epoch": self.epoch, "rows_done": self.micro_step * group}

    def load_state_dict(self, state: dict[str, int]) -> None:
        group, rows = self.micro_batch_size * self.world_size, int(state["rows_done"])
        if rows % group:
            raise ConfigError(
                f"the checkpoint stopped {rows} rows into epoch {state['epoch']}, not a whole "
                f"number of micro steps of {group} rows (trainer.micro_batch_size x "
                "cluster.num_workers); resume with a micro batch size and worker count whose "
                f"product divides {rows}"
            )
        self.epoch, self.micro_step = int(state["epoch"]), rows // group

    def plan(self, epoch: int) -> PackingPlan:
        """The rows of `epoch`, of examples (pairs: of their sequences)."""
        if epoch == 0 and self.first_plan is not None and self.packing:
            plan = self.first_plan
        else:
            plan = self._planned(epoch)
        return sequence_plan(plan) if self.pairs else plan

    def _planned(self, epoch: int) -> PackingPlan:
        return epoch_plan(
            pair_lengths(self.dataset) if self.pairs else self.dataset.lengths(),
            packing=self.packing,
            max_seq_len=self.max_seq_len,
            rows_per_batch=self.micro_batch_size * self.world_size,
            seed=self.seed + epoch,
        )

    def my_rows(self, plan: PackingPlan, costs: np.ndarray, micro_step: int) -> list[np.ndarray]:
        group = self.micro_batch_size * self.world_size
        first = micro_step * group
        ranks = deal_rows(costs[first : first + group], self.world_size, self.micro_batch_size)
        return [plan.row(first + i) for i in np.flatnonzero(ranks == self.rank)]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        # Rows past the last whole micro step of an epoch wait for a later epoch's plan.
        row_len = self.max_seq_len if self.packing else None
        lengths = self.dataset.lengths()
        while True:
            plan = self.plan(self.epoch)
            costs = row_costs(plan, lengths, self.max_seq_len)
            steps = micro_steps_per_epoch(len(plan), self.micro_batch_size, self.world_size)
            while self.micro_step < steps:
                rows = self.my_rows(plan, costs, self.micro_step)
                self.micro_step += 1
                yield self.collate(rows, row_len)
            self.epoch, self.micro_step = self.epoch + 1, 0

    def collate(self, rows: list[np.ndarray], row_len: int | None) -> dict[str, torch.Tensor]:
        data = self.dataset
        batch = collate_rows(
            data.tokens, data.weights, data.offsets, rows, row_len, self.pad_id, self.per_example
        )
        if self.pairs:
            batch |= pair_fields(rows, data.offsets, batch["input_ids"].shape[1])
            if self.reference is not None:
                batch["reference_logps"] = torch.from_numpy(self.reference[batch["pair_ids"]])
        return batch


def run_batches(
    artifact: Path, cfg: TrainConfig, *, rank: int, world_size: int, pad_id: int
) -> RankBatches:
    """This rank's batches of the run's training split, as the config lays them out."""
    return RankBatches(
        TokenizedDataset.load(artifact, "train"),
        max_seq_len=cfg.data.max_seq_len,
        packing=cfg.data.packing,
        micro_batch_size=cfg.trainer.micro_batch_size,
        rank=rank,
        world_size=world_size,
        seed=cfg.trainer.seed,
        pad_id=pad_id,
        per_example=cfg.loss.average == "example",
        first_plan=first_plan(artifact),
        pairs=cfg.objective.pairs,
    )
