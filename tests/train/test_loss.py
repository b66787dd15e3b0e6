"""Packed rows must give every example exactly the losses it gets alone."""

import pytest
import torch

from framework.data.pack import collate_rows
from framework.model.build import build_model
from framework.train.loss import summed_loss, token_losses
from tests.helpers import TINY, suite_chats


@pytest.fixture(scope="module")
def setup(tokenizer):
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, torch.float32).eval()
    return model, suite_chats(tokenizer, 4)


def _batch(data, rows):
    rows = [torch.tensor(r).numpy() for r in rows]
    return collate_rows(data.tokens, data.weights, data.offsets, rows, None, pad_id=0)


def _losses(model, batch):
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
    return token_losses(logits, batch["labels"])


def test_packed_losses_equal_each_example_alone(setup):
    model, data = setup
    order = list(range(len(data)))
    packed = _losses(model, _batch(data, [order]))[0]
    cursor = 0
    for index in order:
        alone = _losses(model, _batch(data, [[index]]))[0]
        n = len(alone)
        torch.testing.assert_close(packed[cursor : cursor + n], alone, atol=1e-5, rtol=0)
        if cursor + n < len(packed):  # predicting the next example's first token: untrained
            assert packed[cursor + n] == 0
        cursor += n + 1


def test_a_row_without_restarting_positions_differs(setup):
    # The same row with one running position sequence lets examples see each other: the
    # check above must be able to fail.
    model, data = setup
    batch = _batch(data, [list(range(len(data)))])
    running = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    assert (_losses(model, batch) - _losses(model, running)).abs().max() > 1e-2


def test_perturbing_one_example_leaves_the_others_unchanged(setup):
    model, data = setup
    batch = _batch(data, [[0, 1, 2]])
    first_len = len(data.example(0)[0])
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][0, 1:first_len] = 7
    before, after = _losses(model, batch), _losses(model, changed)
    torch.testing.assert_close(before[0, first_len:], after[0, first_len:], atol=1e-5, rtol=0)


def test_weights_scale_each_token_loss(setup):
    model, data = setup
    batch = _batch(data, [[0, 1]])
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    doubled = batch["loss_weights"] * 2
    loss, total = summed_loss(logits, batch["labels"], batch["loss_weights"])
    loss2, total2 = summed_loss(logits, batch["labels"], doubled)
    torch.testing.assert_close(loss2, 2 * loss)
    torch.testing.assert_close(total2, 2 * total)
    expected = (token_losses(logits, batch["labels"]) * batch["loss_weights"][:, 1:]).sum()
    torch.testing.assert_close(loss, expected)


def test_all_masked_batch_has_zero_loss_and_zero_grads(setup):
    model, data = setup
    batch = _batch(data, [[0]])
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    loss, total = summed_loss(logits, batch["labels"], torch.zeros_like(batch["loss_weights"]))
    loss.backward()
    assert total.item() == 0 and loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


@pytest.mark.slow
def test_packed_losses_equal_each_example_alone_on_the_real_model(real_slice, real_tokenizer):
    """The same invariance on 2 pretrained layers of SmolLM2, with its tokenizer, template
    and 49,152-token vocabulary."""
    data = suite_chats(real_tokenizer, 4)
    packed = _losses(real_slice, _batch(data, [list(range(len(data)))]))[0]
    alone = [_losses(real_slice, _batch(data, [[i]]))[0] for i in range(len(data))]
    separated = torch.cat([torch.cat([a, a.new_zeros(1)]) for a in alone])[: len(packed)]
    torch.testing.assert_close(packed, separated, atol=1e-4, rtol=0)
    assert packed.sum() > 0
