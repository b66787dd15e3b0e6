import dataclasses

import torch

from framework.model.adapters import prepare_for_training
from framework.model.build import build_model
from tests.helpers import TINY


def test_full_fine_tuning_trains_every_weight_of_the_model_it_was_given(tokenizer):
    model = build_model(TINY, tokenizer, torch.float32)
    prepared = prepare_for_training(model, TINY)
    assert prepared is model and not prepared.is_gradient_checkpointing
    assert all(p.requires_grad for p in prepared.parameters())


def test_gradient_checkpointing_switch(tokenizer):
    cfg = dataclasses.replace(TINY, gradient_checkpointing=True)
    model = prepare_for_training(build_model(cfg, tokenizer, torch.float32), cfg)
    assert model.is_gradient_checkpointing
