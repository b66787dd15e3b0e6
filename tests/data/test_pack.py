import json

import numpy as np
import pytest

from framework.data.pack import (
    IGNORE_INDEX,
    PackingPlan,
    best_fit_decreasing,
    collate_rows,
    example_bounds,
    length_grouped,
)
from tests.helpers import SHARED_DATA


def reference_best_fit(lengths, capacity):
    """One example at a time, longest first, into the fullest row that holds it."""
    loads = []
    for length in sorted(lengths, reverse=True):
        fits = [i for i, load in enumerate(loads) if load + length <= capacity]
        if fits:
            best = max(fits, key=lambda i: loads[i])
            loads[best] += length
        else:
            loads.append(length)
    return sorted(loads)


def _rows(plan: PackingPlan) -> list[list[int]]:
    return [plan.row(i).tolist() for i in range(len(plan))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bulk_best_fit_matches_one_at_a_time_best_fit(seed):
    lengths = np.random.default_rng(seed).integers(1, 40, size=400)
    plan = best_fit_decreasing(lengths, capacity=64, seed=seed)
    assert sorted(plan.row_tokens(lengths).tolist()) == reference_best_fit(lengths, 64)


def test_every_example_is_packed_exactly_once_within_capacity():
    lengths = np.random.default_rng(1).integers(1, 300, size=2000)
    plan = best_fit_decreasing(lengths, capacity=512, seed=0)
    assert sorted(plan.example_ids.tolist()) == list(range(2000))
    assert plan.row_tokens(lengths).max() <= 512


def test_packing_is_deterministic_per_seed_and_reshuffles_across_seeds():
    lengths = np.random.default_rng(2).integers(1, 300, size=500)
    assert _rows(best_fit_decreasing(lengths, 512, 7)) == _rows(
        best_fit_decreasing(lengths, 512, 7)
    )
    assert _rows(best_fit_decreasing(lengths, 512, 7)) != _rows(
        best_fit_decreasing(lengths, 512, 8)
    )


def test_too_long_example_is_refused():
    with pytest.raises(ValueError, match=r"\[1, 8\]"):
        best_fit_decreasing(np.array([3, 9]), capacity=8, seed=0)


def test_openchat_lengths_fill_rows_to_99_percent():
    # Real conversation lengths (OpenChat V1, clipped at 2048).
    lengths = np.array(json.loads((SHARED_DATA / "lengths/openchat_v1_lengths.json").read_text()))
    lengths = np.minimum(lengths, 2048)
    plan = best_fit_decreasing(lengths, capacity=2048, seed=0)
    assert lengths.sum() / (len(plan) * 2048) >= 0.99


def _flat(lengths, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 500, size=sum(lengths)).astype(np.int32)
    weights = (rng.random(sum(lengths)) < 0.5).astype(np.float32) * 1.5
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return tokens, weights, offsets


def test_collated_rows_restart_positions_and_mask_example_starts():
    tokens, weights, offsets = _flat([5, 3, 4])
    rows = [np.array([0, 1]), np.array([2])]
    batch = collate_rows(tokens, weights, offsets, rows, row_len=10, pad_id=0)
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 3, 4, 0, 1, 2, 0, 1],
        [0, 1, 2, 3, 0, 1, 2, 3, 4, 5],
    ]
    # Where the kernels cut the rows: examples, then the padding run as one more segment.
    assert example_bounds(batch["position_ids"]) == [[0, 5, 8, 10], [0, 4, 10]]
    assert batch["num_tokens"].tolist() == [8, 4]
    for r, row in enumerate(rows):
        cursor = 0
        for index in row:
            ids, w = (
                tokens[offsets[index] : offsets[index + 1]],
                weights[offsets[index] : offsets[index + 1]],
            )
            end = cursor + len(ids)
            assert batch["input_ids"][r, cursor:end].tolist() == ids.tolist()
            expected = [int(t) if x > 0 else IGNORE_INDEX for t, x in zip(ids, w, strict=True)]
            expected[0] = IGNORE_INDEX
            assert batch["labels"][r, cursor:end].tolist() == expected
            assert batch["loss_weights"][r, cursor + 1 : end].tolist() == w[1:].tolist()
            assert batch["loss_weights"][r, cursor] == 0
            cursor = end
        assert (batch["labels"][r, cursor:] == IGNORE_INDEX).all()
        assert (batch["loss_weights"][r, cursor:] == 0).all()


def test_unpacked_rows_pad_to_longest_in_batch():
    tokens, weights, offsets = _flat([5, 3, 7])
    batch = collate_rows(tokens, weights, offsets, [np.array([0]), np.array([1])], None, 0)
    assert batch["input_ids"].shape == (2, 5)


def test_every_trained_token_survives_packing_once():
    lengths = list(np.random.default_rng(3).integers(2, 60, size=200))
    tokens, weights, offsets = _flat(lengths)
    plan = best_fit_decreasing(np.array(lengths), capacity=128, seed=0)
    rows = [plan.row(i) for i in range(len(plan))]
    batch = collate_rows(tokens, weights, offsets, rows, row_len=128, pad_id=0)
    # An example's first token can never be a label: nothing before it predicts it.
    expected = sum(float(weights[offsets[i] + 1 : offsets[i + 1]].sum()) for i in range(200))
    assert batch["loss_weights"].sum().item() == pytest.approx(expected)


def test_length_grouped_batches_are_a_permutation_of_similar_lengths():
    lengths = np.random.default_rng(4).integers(1, 1000, size=1000)
    plan = length_grouped(lengths, rows_per_batch=8, seed=0)
    assert sorted(plan.example_ids.tolist()) == list(range(1000))
    batches = plan.example_ids.reshape(-1, 8)
    padded = sum(lengths[b].max() * 8 for b in batches)
    assert lengths.sum() / padded > 0.95
