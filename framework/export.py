"""Hugging Face export: full weights gathered from any ZeRO stage, saved as safetensors."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase


def gather_state_dict(model: PreTrainedModel, zero_stage: int) -> dict[str, torch.Tensor]:
    """Collective: full parameters on rank 0 (empty dict elsewhere). Under ZeRO-3 each
    parameter is gathered alone, so no rank ever holds two full copies of the model."""
    rank0 = dist.get_rank() == 0
    state = {}
    for name, param in model.named_parameters():
        with deepspeed.zero.GatheredParameters([param], enabled=zero_stage == 3):
            if rank0:
                state[name] = param.detach().to("cpu", copy=True)
    return state


def export_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    zero_stage: int,
) -> None:
    """Collective: write model + tokenizer to `out_dir`, replacing it only when complete."""
    state = gather_state_dict(model, zero_stage)
    if dist.get_rank() == 0:
        out_dir = Path(out_dir)
        staging = out_dir.with_name(out_dir.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(staging, state_dict=state, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        shutil.rmtree(out_dir, ignore_errors=True)
        os.replace(staging, out_dir)
    dist.barrier()
