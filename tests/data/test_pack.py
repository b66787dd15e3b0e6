import json

import numpy as np
import pytest

from framework.data.dataset import TokenizedDataset
from framework.data.pack import IGNORE_INDEX, best_fit_decreasing, collate_rows, one_per_row
from tests.conftest import SHARED_DATA


def _dataset(lengths, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 500, size=sum(lengths), dtype=np.int32)
    mask = rng.random(sum(lengths)) < 0.5
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedDataset(tokens, mask, offsets)


def test_every_example_is_packed_exactly_once_within_capacity():
    lengths = np.random.default_rng(1).integers(1, 300, size=2000)
    rows = best_fit_decreasing(lengths, capacity=512, seed=0)
    assert sorted(i for row in rows for i in row) == list(range(2000))
    assert max(int(lengths[row].sum()) for row in rows) <= 512


def test_packing_is_deterministic_per_seed_and_reshuffles_across_seeds():
    lengths = np.random.default_rng(2).integers(1, 300, size=500)
    assert best_fit_decreasing(lengths, 512, 7) == best_fit_decreasing(lengths, 512, 7)
    assert best_fit_decreasing(lengths, 512, 7) != best_fit_decreasing(lengths, 512, 8)


def test_openchat_lengths_fill_rows_nearly_full():
    # Real conversation lengths (lengths of OpenChat V1, clipped at 2048).
    lengths = np.array(json.loads((SHARED_DATA / "lengths/openchat_v1_lengths.json").read_text()))
    lengths = np.minimum(lengths, 2048)
    rows = best_fit_decreasing(lengths, capacity=2048, seed=0)
    fill = lengths.sum() / (len(rows) * 2048)
    assert fill > 0.98


def test_collated_rows_restart_positions_and_mask_example_starts():
    data = _dataset([5, 3, 4])
    batch = collate_rows(data, [[0, 1], [2]], row_len=10, pad_id=0)
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 0, 1, 2, 0, 1],
        [0, 1, 2, 3, 0, 1, 2, 3, 4, 5],
    ]
    assert batch["num_tokens"].tolist() == [8, 4]
    for r, row in enumerate([[0, 1], [2]]):
        cursor = 0
        for index in row:
            tokens, mask = data.example(index)
            end = cursor + len(tokens)
            assert batch["input_ids"][r, cursor:end].tolist() == tokens.tolist()
            expected = [t if m else IGNORE_INDEX for t, m in zip(tokens, mask, strict=True)]
            expected[0] = IGNORE_INDEX
            assert batch["labels"][r, cursor:end].tolist() == expected
            cursor = end
        assert (batch["labels"][r, cursor:] == IGNORE_INDEX).all()
        assert (batch["input_ids"][r, cursor:] == 0).all()


def test_unpacked_rows_pad_to_longest_in_batch():
    data = _dataset([5, 3, 7])
    batch = collate_rows(data, [[0], [1]], row_len=None, pad_id=0)
    assert batch["input_ids"].shape == (2, 5)


def test_every_trained_token_survives_packing_once():
    data = _dataset(list(np.random.default_rng(3).integers(2, 60, size=200)))
    rows = best_fit_decreasing(data.lengths(), capacity=128, seed=0)
    batch = collate_rows(data, rows, row_len=128, pad_id=0)
    trained_in_rows = int((batch["labels"] != IGNORE_INDEX).sum())
    # Each example's first token can never be a label: it has nothing before it to predict it.
    expected = sum(int(data.example(i)[1][1:].sum()) for i in range(len(data)))
    assert trained_in_rows == expected


@pytest.mark.parametrize("n", [1, 10])
def test_one_per_row_is_a_permutation(n):
    assert sorted(r[0] for r in one_per_row(n, seed=0)) == list(range(n))
