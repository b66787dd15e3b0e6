"""Tokenizers: a pretrained model's own, or a byte-level BPE trained offline and cached."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from framework.data.templates import CHAT_TEMPLATES

PAD, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
_BPE_VERSION = "1"  # bump when training below changes, so old caches are not reused


def train_bpe(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE over `texts` with ChatML special tokens; deterministic for its input."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        eos_token=IM_END,
        chat_template=CHAT_TEMPLATES["chatml"],
    )


def cached_bpe(texts: Sequence[str], vocab_size: int, cache_dir: str) -> PreTrainedTokenizerFast:
    """`train_bpe`, reusing an earlier result for the same texts and size."""
    digest = hashlib.sha256(f"{_BPE_VERSION}:{vocab_size}".encode())
    for text in texts:
        digest.update(text.encode())
        digest.update(b"\0")
    path = Path(cache_dir) / "tokenizers" / digest.hexdigest()[:16]
    if not path.is_dir():
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.mkdtemp(dir=path.parent)
        train_bpe(texts, vocab_size).save_pretrained(staging)
        try:
            os.rename(staging, path)  # atomic: a concurrent build of the same key may win
        except OSError:
            shutil.rmtree(staging)
    return AutoTokenizer.from_pretrained(path)


def pretrained_tokenizer(source: str, trust_remote_code: bool) -> PreTrainedTokenizerBase:
    """The tokenizer of the resolved model `source`, with a pad token when it lacks one."""
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
