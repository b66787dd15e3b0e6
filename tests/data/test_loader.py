import numpy as np

from framework.data.dataset import TokenizedDataset
from framework.data.loader import RankBatches


def _dataset(n=101):
    lengths = np.random.default_rng(0).integers(5, 40, size=n)
    tokens = np.repeat(np.arange(1, n + 1, dtype=np.int32), lengths)  # token = example id
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedDataset(tokens, np.ones(lengths.sum(), dtype=bool), offsets)


def _rank(rank, packing=True, world=2):
    return RankBatches(
        _dataset(),
        max_seq_len=64,
        packing=packing,
        micro_batch_size=2,
        rank=rank,
        world_size=world,
        seed=0,
        pad_id=0,
    )


def _first_tokens(batches):
    return {
        int(row[i])
        for batch in batches
        for row, pos in zip(batch["input_ids"], batch["position_ids"], strict=True)
        for i in range(len(row))
        if pos[i] == 0 and row[i] != 0
    }


def test_ranks_get_equal_batch_counts_and_disjoint_examples():
    for packing in (True, False):
        per_rank = [list(_rank(r, packing).epoch(0)) for r in range(2)]
        assert len(per_rank[0]) == len(per_rank[1]) > 0
        assert not _first_tokens(per_rank[0]) & _first_tokens(per_rank[1])


def test_epochs_are_reshuffled_and_reproducible():
    loader = _rank(0)
    first = [b["input_ids"] for b in loader.epoch(0)]
    again = [b["input_ids"] for b in _rank(0).epoch(0)]
    second = [b["input_ids"] for b in loader.epoch(1)]
    assert all((a == b).all() for a, b in zip(first, again, strict=True))
    assert any(a.shape != b.shape or (a != b).any() for a, b in zip(first, second, strict=False))
