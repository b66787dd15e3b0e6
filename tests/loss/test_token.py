"""Packed rows must give every example exactly the losses it gets alone, and the loss at
trained positions only must give the full-logit path's losses and gradients."""

import numpy as np
import pytest
import torch

from framework.config.schema import AdapterConfig
from framework.data.pack import IGNORE_INDEX, collate_rows
from framework.loss.token import summed_loss, token_loss_fn, token_losses
from framework.model.adapters import prepare_for_training
from framework.model.build import build_model
from tests.helpers import TINY, cpu_loss, suite_chats


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
    losses = token_losses(logits, batch["labels"])
    loss, total = summed_loss(losses, batch["loss_weights"])
    loss2, total2 = summed_loss(losses, doubled)
    torch.testing.assert_close(loss2, 2 * loss)
    torch.testing.assert_close(total2, 2 * total)
    expected = (token_losses(logits, batch["labels"]) * batch["loss_weights"][:, 1:]).sum()
    torch.testing.assert_close(loss, expected)


def test_all_masked_batch_has_zero_loss_and_zero_grads(setup):
    model, data = setup
    batch = _batch(data, [[0]])
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    losses = token_losses(logits, batch["labels"])
    loss, total = summed_loss(losses, torch.zeros_like(batch["loss_weights"]))
    loss.backward()
    assert total.item() == 0 and loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())


def _path_losses_and_grads(model, batch, **settings):
    """(token losses, summed loss, gradients) through token_loss_fn with these settings."""
    model.zero_grad()
    losses = token_loss_fn(model, cpu_loss(**settings))(
        batch["input_ids"], batch["position_ids"], batch["labels"]
    )
    loss, _ = summed_loss(losses, batch["loss_weights"])
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    return losses.detach(), loss.detach(), grads


def _assert_same_path(model, batch, **settings):
    losses, loss, grads = _path_losses_and_grads(model, batch, positions="all")
    c_losses, c_loss, c_grads = _path_losses_and_grads(model, batch, **settings)
    torch.testing.assert_close(c_losses, losses, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(c_loss, loss, rtol=1e-6, atol=0)
    assert c_grads.keys() == grads.keys() and grads
    for name, grad in grads.items():
        gap = (c_grads[name] - grad).norm() / grad.norm().clamp_min(1e-12)
        assert gap < 1e-6, (name, gap.item())
    return loss


BATCHES = {
    "packed": lambda data: _batch(data, [[0, 1, 2], [3]]),
    "padded": lambda data: _batch(data, [[0], [1], [2], [3]]),
    "per-example": lambda data: collate_rows(
        data.tokens, data.weights, data.offsets, [np.array([0, 1, 2]), np.array([3])], None, 0, True
    ),
}


@pytest.mark.parametrize("kind", sorted(BATCHES))
@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_trained_positions_give_the_full_logit_losses_and_gradients(setup, kind, chunk):
    """Packed, padded and per-example-weighted batches; the chunk size (one position, a
    size that leaves a partial chunk, one chunk for all) changes nothing."""
    model, data = setup
    loss = _assert_same_path(model, BATCHES[kind](data), chunk_tokens=chunk)
    assert loss > 0


def test_trained_positions_with_nothing_trained_give_a_zero_with_a_graph(setup):
    model, data = setup
    batch = _batch(data, [[0, 1]])
    batch["labels"] = torch.full_like(batch["labels"], IGNORE_INDEX)
    losses, loss, grads = _path_losses_and_grads(model, batch)
    assert loss.item() == 0.0 and not losses.any()
    assert grads and all(not g.any() for g in grads.values())  # backward ran through the head


def test_trained_positions_through_a_lora_model(tokenizer):
    """peft's wrapper: the decoder and the head are found through it, and the adapters'
    gradients match the full-logit path's."""
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, torch.float32)
    model = prepare_for_training(model, TINY, AdapterConfig(method="lora", dropout=0.0))
    with torch.no_grad():  # B starts at zero: give the adapters an effect to differentiate
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    _assert_same_path(model, _batch(suite_chats(tokenizer, 4), [[0, 1], [2, 3]]))


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


@pytest.mark.slow
def test_trained_positions_on_the_real_model(real_slice, real_tokenizer):
    """SmolLM2's 49,152-token head, tied to its embeddings: the same losses and gradients
    as the full-logit path."""
    data = suite_chats(real_tokenizer, 4)
    _assert_same_path(real_slice, _batch(data, [[0, 1], [2, 3]]), chunk_tokens=64)
