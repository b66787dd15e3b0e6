"""Shared fixtures: small real components (a trained BPE tokenizer, a tiny Llama)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from framework.config import TrainConfig, from_hydra, register_schemas
from framework.suite.build import training_chats
from framework.suite.families import FAMILIES
from framework.tokenizer import train_bpe

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = str(ROOT / "conf")
SHARED_DATA = ROOT.parent / "shared" / "data"
# Overrides for a training that takes seconds: a 2-layer Llama, short rows, no wandb.
TINY_RUN = [
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_layers=2",
    "model.num_heads=4",
    "model.num_kv_heads=2",
    "data.max_seq_len=256",
    "trainer.micro_batch_size=2",
    # Evaluation at the end only, without the suite's answers: tests that need them ask.
    "trainer.eval_every=0",
    "trainer.eval_suite_per_family=0",
    "logger=none",
]

register_schemas()


def compose_config(overrides: list[str] | None = None) -> TrainConfig:
    """Compose conf/train.yaml with overrides, as launch/train.py would."""
    if not GlobalHydra.instance().is_initialized():
        # Initialised once for the session: a fresh initialisation per call is most of
        # the cost of composing.
        initialize_config_dir(config_dir=CONF_DIR, version_base=None)
    return from_hydra(compose(config_name="train", overrides=overrides or []))


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

    from framework.model import build_model
    from tests.distributed import single_process_group
    from tests.test_loop import TINY

    single_process_group()
    torch.manual_seed(0)
    return build_model(TINY, tokenizer, torch.float32).eval()
