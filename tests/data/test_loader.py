import json

import numpy as np
import pytest

from framework.data.dataset import TokenizedDataset
from framework.data.loader import RankBatches, row_costs
from framework.data.pack import best_fit_decreasing
from tests.helpers import SHARED_DATA


def _dataset(lengths):
    lengths = np.asarray(lengths)
    # Every token of example i is i + 1, so a batch tells which examples it holds.
    tokens = np.repeat(np.arange(1, len(lengths) + 1, dtype=np.int32), lengths)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    return TokenizedDataset(tokens, np.ones(lengths.sum(), dtype=np.float32), offsets)


def _loader(dataset, rank, *, packing=True, world=2, max_seq_len=64, mbs=2):
    return RankBatches(
        dataset,
        max_seq_len=max_seq_len,
        packing=packing,
        micro_batch_size=mbs,
        rank=rank,
        world_size=world,
        seed=0,
        pad_id=0,
    )


def _examples(batch) -> set[int]:
    ids = batch["input_ids"][batch["position_ids"] == 0]
    return {int(i) - 1 for i in ids if i != 0}


def _take(loader, n):
    iterator = iter(loader)
    return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("packing", [True, False])
def test_an_epoch_gives_ranks_equal_counts_and_each_example_at_most_once(packing):
    dataset = _dataset(np.random.default_rng(0).integers(5, 40, size=101))
    loaders = [_loader(dataset, r, packing=packing) for r in range(2)]
    steps = [sum(1 for _ in _epoch(loader)) for loader in loaders]
    assert steps[0] == steps[1] > 0
    seen = [
        i
        for loader in [_loader(dataset, r, packing=packing) for r in range(2)]
        for b in _epoch(loader)
        for i in _examples(b)
    ]
    assert len(seen) == len(set(seen))
    assert len(seen) > 0.8 * 101


def _epoch(loader):
    for batch in loader:
        if loader.epoch > 0:
            return
        yield batch


def test_rows_of_tens_of_thousands_of_tokens_hold_long_examples_whole():
    """Long context (rows a sequence-parallel group shares): examples of 40,000, 30,000 and
    20,000 tokens among short ones, rows of 65,536 tokens: each example sits whole in one
    row, its positions 0 to its length - 1, and every token is handed out once."""
    lengths = [40_000, 30_000, 20_000, 5_000, 500, 300]
    batches = _take(_loader(_dataset(lengths), 0, world=1, max_seq_len=65_536, mbs=1), 2)
    tokens = np.concatenate([b["input_ids"].numpy().ravel() for b in batches])
    positions = np.concatenate([b["position_ids"].numpy().ravel() for b in batches])
    assert all(b["input_ids"].shape == (1, 65_536) for b in batches)
    for example, length in enumerate(lengths):
        at = np.flatnonzero(tokens == example + 1)
        assert len(at) == length
        np.testing.assert_array_equal(positions[at], np.arange(length))


def test_sampler_state_resumes_exactly_mid_epoch_and_across_epochs():
    dataset = _dataset(np.random.default_rng(1).integers(5, 40, size=60))
    straight = _take(_loader(dataset, 1), 12)
    for k in (3, 7):
        first = _loader(dataset, 1)
        _take(first, k)
        resumed = _loader(dataset, 1)
        resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
        rest = _take(resumed, 12 - k)
        for a, b in zip(straight[k:], rest, strict=True):
            assert all((a[key] == b[key]).all() for key in a)
    assert resumed.epoch >= 1  # the 12 batches cross an epoch boundary


def test_epochs_are_reshuffled_and_reproducible():
    dataset = _dataset(np.random.default_rng(2).integers(5, 40, size=80))
    loader = _loader(dataset, 0)
    again = _loader(dataset, 0)
    assert loader.plan(0).example_ids.tolist() == again.plan(0).example_ids.tolist()
    assert loader.plan(0).example_ids.tolist() != loader.plan(1).example_ids.tolist()


def test_ranks_get_balanced_work_on_real_lengths():
    lengths = np.minimum(
        json.loads((SHARED_DATA / "lengths/openchat_v1_lengths.json").read_text()), 2048
    )
    dataset = _dataset(lengths)
    world, mbs = 8, 2
    loaders = [_loader(dataset, r, world=world, max_seq_len=2048, mbs=mbs) for r in range(world)]
    ratios = []
    for batches in zip(*(_take(loader, 20) for loader in loaders), strict=True):
        tokens = np.array([b["num_tokens"].sum().item() for b in batches])
        ratios.append(tokens.max() / tokens.mean())
    assert np.mean(ratios) <= 1.02


def test_stored_first_plan_is_what_the_loader_would_compute():
    dataset = _dataset(np.random.default_rng(3).integers(5, 40, size=80))
    stored = best_fit_decreasing(dataset.lengths(), 64, seed=0)
    loader = _loader(dataset, 0)
    assert loader.plan(0).example_ids.tolist() == stored.example_ids.tolist()
    assert row_costs(stored, dataset.lengths(), 64).shape == (len(stored),)
