import math

import numpy as np
import pytest
import torch

from framework.eval.eval_set import EvalSet, eval_loss, greedy_samples, rank_chunks
from framework.loss.token import token_losses
from tests.helpers import synthetic_data


@pytest.fixture(scope="module")
def setup(tiny_model, tokenizer):
    data = synthetic_data(len(tokenizer))
    sources = np.arange(len(data)) % 2
    return tiny_model, EvalSet(data, sources, ["alpaca", "glaive"])


def _reference(model, evalset):
    """Example by example: sum of weighted token losses / sum of weights, per source too."""
    sums = np.zeros((2, 2))
    for index in range(len(evalset.dataset)):
        tokens, weights = evalset.dataset.example(index)
        ids = torch.as_tensor(np.asarray(tokens), dtype=torch.long)[None]
        labels = ids.clone()
        labels[0, torch.as_tensor(np.asarray(weights)) == 0] = -100
        with torch.no_grad():
            losses = token_losses(model(input_ids=ids).logits, labels)[0]
        w = torch.as_tensor(np.asarray(weights[1:]), dtype=torch.float64)
        sums[evalset.source_ids[index]] += [(losses.double() * w).sum().item(), w.sum().item()]
    return sums


def test_eval_loss_equals_an_example_by_example_reference(setup):
    model, evalset = setup
    metrics = eval_loss(
        lambda ids, positions, labels: token_losses(
            model(input_ids=ids, position_ids=positions).logits, labels
        ),
        evalset,
        micro_batch_size=3,
        rank=0,
        world=1,
        pad_id=0,
        device=torch.device("cpu"),
    )
    sums = _reference(model, evalset)
    expected = sums[:, 0].sum() / sums[:, 1].sum()
    assert metrics["eval_loss"] == pytest.approx(expected, rel=1e-6)
    assert metrics["eval_ppl"] == pytest.approx(math.exp(expected), rel=1e-6)
    assert metrics["eval_loss/glaive"] == pytest.approx(sums[1, 0] / sums[1, 1], rel=1e-6)


def test_every_rank_gets_the_same_number_of_eval_batches_covering_all_examples():
    lengths = np.random.default_rng(0).integers(1, 100, size=23)
    chunks = [rank_chunks(lengths, 4, rank, 3) for rank in range(3)]
    assert len({len(c) for c in chunks}) == 1
    assert sorted(int(i) for c in chunks for chunk in c for i in chunk) == list(range(23))


def test_greedy_samples_pair_each_prompt_with_its_reference(setup, tokenizer):
    model, evalset = setup
    samples = greedy_samples(
        model,
        tokenizer,
        evalset,
        count=2,
        max_new_tokens=4,
        synced=False,
        device=torch.device("cpu"),
    )
    assert len(samples) == 2
    tokens, weights = evalset.dataset.example(0)
    trained = np.flatnonzero(np.asarray(weights) > 0)
    last = tokenizer.decode(tokens[trained[-1] : trained[-1] + 1])
    assert samples[0]["reference"].endswith(last)
    assert all(set(s) == {"prompt", "reference", "generated"} for s in samples)
