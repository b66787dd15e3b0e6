"""The export at the end of training: the trained weights, gathered from the live engine at
any ZeRO stage, written as a Hugging Face directory through framework/hf/write.py's
write_verified (an adapter run's: through framework/hf/adapter_export.py)."""

from __future__ import annotations

from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from framework.hf import adapter_export
from framework.hf.write import ExportError, holding, write_verified


def gather_state_dict(
    model: PreTrainedModel, zero_stage: int, trainable_only: bool = False
) -> dict[str, torch.Tensor]:
    """Collective: full parameters (`trainable_only`: those that train) on rank 0 (empty
    dict elsewhere). Under ZeRO-3 each parameter is gathered alone, so no rank ever holds
    two full copies of the model."""
    rank0 = dist.get_rank() == 0
    state = {}
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
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
    base: str | None = None,
) -> None:
    """Collective: rank 0 writes the model's gathered weights and the tokenizer to
    `out_dir` through `write_verified` (an adapter model: through adapter_export.py, the
    adapter over `base`, its source); every rank raises if that failed. Under ZeRO-3,
    call it once transformers' HfDeepSpeedConfig is gone: rank 0 builds models alone."""
    state = gather_state_dict(model, zero_stage)
    failure = None
    if dist.get_rank() == 0:
        try:
            _write_trained(model, state, tokenizer, Path(out_dir), base)
        except Exception as err:  # the other ranks must learn of it, not wait forever
            failure = err
    outcome = [None if failure is None else str(failure)]
    dist.broadcast_object_list(outcome, src=0)
    if failure is not None:
        raise failure
    if outcome[0] is not None:
        raise ExportError(f"rank 0 could not export the model to {out_dir}: {outcome[0]}")


def _write_trained(model, state, tokenizer, out_dir: Path, base: str | None) -> None:
    source = "the trained model"
    if not hasattr(model, "peft_config"):
        reference = holding(model.config, state, model.generation_config, source=source)
        write_verified(reference, tokenizer, out_dir)
        return
    lora = model.peft_config["default"]
    reference = adapter_export.holding_adapter(
        model.get_base_model().config, state, model.generation_config, lora, source=source
    )
    dtype = next(t.dtype for t in state.values() if t.is_floating_point())
    adapter_export.write_adapter_verified(
        reference, tokenizer, out_dir, base=base, base_dtype=dtype
    )
