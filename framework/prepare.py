"""Driver-side preparation, before any worker starts: checks that fail fast, the resolved
config, the tokenizer and the tokenized data set, all written to `run.output_dir` where
every worker (on any node sharing that path) reads them."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from omegaconf import OmegaConf

from framework.config import TrainConfig
from framework.data.dataset import BuildStats, tokenize_conversations
from framework.data.loader import epoch_rows, micro_batches_per_rank
from framework.data.sources import conversations
from framework.model import check_model_source
from framework.tokenizer import cached_bpe, pretrained_tokenizer

TOKENIZER_DIR = "tokenizer"
DATASET_FILE = "data/train.npz"


def prepare_run(cfg: TrainConfig) -> BuildStats:
    """Write config.yaml, tokenizer/ and data/train.npz under `run.output_dir`."""
    check_model_source(cfg.model)
    out = Path(cfg.run.output_dir)
    (out / "data").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(dataclasses.asdict(cfg)), out / "config.yaml")
    chats = list(conversations(cfg.data, cfg.trainer.seed))
    if cfg.model.name_or_path is None:
        texts = [m["content"] for _, messages in chats for m in messages]
        tokenizer = cached_bpe(texts, cfg.model.vocab_size, cfg.run.cache_dir)
    else:
        tokenizer = pretrained_tokenizer(cfg.model)
    tokenizer.save_pretrained(out / TOKENIZER_DIR)
    dataset = tokenize_conversations(chats, tokenizer, cfg.data.max_seq_len)
    rows = epoch_rows(
        dataset,
        packing=cfg.data.packing,
        max_seq_len=cfg.data.max_seq_len,
        seed=cfg.trainer.seed,
    )
    micro_batches_per_rank(len(rows), cfg.trainer.micro_batch_size, cfg.cluster.num_workers)
    dataset.save(str(out / DATASET_FILE))
    return dataset.stats
