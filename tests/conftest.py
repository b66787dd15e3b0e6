"""Shared fixtures: small real components (a trained BPE tokenizer, a tiny Llama).
Plain helpers are in tests/helpers.py."""

from __future__ import annotations

import pytest

from framework.model.tokenizer import train_bpe
from framework.suite.build import training_chats
from framework.suite.families import FAMILIES
from tests.helpers import TINY, single_process_group


@pytest.fixture(scope="session")
def tokenizer():
    texts = [
        m["content"] for r in training_chats(list(FAMILIES), 300, seed=0) for m in r["messages"]
    ]
    return train_bpe(texts, vocab_size=512)


@pytest.fixture(scope="module")
def tiny_model(tokenizer):
    """A 2-layer Llama in eval mode, inside a one-rank process group (collective code)."""
    import torch

    from framework.model.build import build_model

    single_process_group()
    torch.manual_seed(0)
    return build_model(TINY, tokenizer, torch.float32).eval()
