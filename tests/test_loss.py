"""Packed rows must give every example exactly the losses it gets alone."""

import pytest
import torch

from framework.config import ModelConfig
from framework.data.dataset import tokenize_conversations
from framework.data.demo import demo_conversations
from framework.data.pack import IGNORE_INDEX, collate_rows
from framework.loss import summed_loss, token_losses
from framework.model import build_model

TINY = ModelConfig(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2)


@pytest.fixture(scope="module")
def setup(tokenizer):
    torch.manual_seed(0)
    model = build_model(TINY, tokenizer, torch.float32).eval()
    chats = [(f"demo[{i}]", r["messages"]) for i, r in enumerate(demo_conversations(4, seed=5))]
    return model, tokenize_conversations(chats, tokenizer, max_seq_len=512)


def _losses(model, batch):
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits
    return token_losses(logits, batch["labels"])


def test_packed_losses_equal_each_example_alone(setup):
    model, data = setup
    order = list(range(len(data)))
    packed = _losses(model, collate_rows(data, [order], row_len=None, pad_id=0))[0]
    cursor = 0
    for index in order:
        alone = _losses(model, collate_rows(data, [[index]], row_len=None, pad_id=0))[0]
        n = len(alone)
        # Position cursor+n-1 predicts the next example's first token: never trained.
        torch.testing.assert_close(packed[cursor : cursor + n], alone, atol=1e-5, rtol=0)
        assert packed[cursor + n] == 0 if cursor + n < len(packed) else True
        cursor += n + 1


def test_a_row_without_restarting_positions_differs(setup):
    # The same row with one running position sequence lets examples see each other: the
    # check above must be able to fail.
    model, data = setup
    batch = collate_rows(data, [list(range(len(data)))], row_len=None, pad_id=0)
    running = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1])[None])
    assert (_losses(model, batch) - _losses(model, running)).abs().max() > 1e-2


def test_perturbing_one_example_leaves_the_others_unchanged(setup):
    model, data = setup
    batch = collate_rows(data, [[0, 1, 2]], row_len=None, pad_id=0)
    first_len = len(data.example(0)[0])
    changed = dict(batch, input_ids=batch["input_ids"].clone())
    changed["input_ids"][0, 1:first_len] = 7
    before, after = _losses(model, batch), _losses(model, changed)
    torch.testing.assert_close(before[0, first_len:], after[0, first_len:], atol=1e-5, rtol=0)


def test_all_masked_batch_has_zero_loss_and_zero_grads(setup):
    model, data = setup
    batch = collate_rows(data, [[0]], row_len=None, pad_id=0)
    model.zero_grad()
    logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    loss, count = summed_loss(logits, torch.full_like(batch["labels"], IGNORE_INDEX))
    loss.backward()
    assert count == 0 and loss.item() == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
