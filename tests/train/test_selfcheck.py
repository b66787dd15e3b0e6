import numpy as np
import pytest
import torch

from framework.data.pack import collate_rows
from framework.train.selfcheck import PackingCheckFailed, verify_packing
from tests.helpers import single_process_group, synthetic_data


@pytest.fixture(scope="module")
def model_and_batch(tiny_model, tokenizer):
    data = synthetic_data(len(tokenizer))
    rows = [np.array([0, 1, 2]), np.array([3, 4, 5])]
    return tiny_model, collate_rows(data.tokens, data.weights, data.offsets, rows, 128, 0)


def test_correct_packing_passes(model_and_batch):
    model, batch = model_and_batch
    worst = verify_packing(lambda i, p: model(input_ids=i, position_ids=p).logits, batch, rtol=1e-4)
    assert worst < 1e-5


def test_examples_that_see_each_other_stop_the_run(model_and_batch):
    model, batch = model_and_batch

    def leaky(ids, positions):  # positions never restart: one long causal sequence
        running = torch.arange(ids.shape[1])[None].expand_as(ids)
        return model(input_ids=ids, position_ids=running).logits

    with pytest.raises(PackingCheckFailed, match=r"trainer\.verify_packing=false"):
        verify_packing(leaky, batch, rtol=1e-4)


@pytest.mark.slow
def test_the_packing_self_check_passes_on_the_real_model(real_slice, real_tokenizer):
    single_process_group()
    data = synthetic_data(len(real_tokenizer))
    batch = collate_rows(data.tokens, data.weights, data.offsets, [np.arange(6)], 256, 0)
    logits = lambda i, p: real_slice(input_ids=i, position_ids=p).logits  # noqa: E731
    assert verify_packing(logits, batch, rtol=1e-4) < 1e-4

    def leaky(ids, positions):
        running = torch.arange(ids.shape[1])[None].expand_as(ids)
        return real_slice(input_ids=ids, position_ids=running).logits

    with pytest.raises(PackingCheckFailed):
        verify_packing(leaky, batch, rtol=1e-4)
