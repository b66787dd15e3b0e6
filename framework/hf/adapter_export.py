"""An adapter run's two exports, from the live engine or a checkpoint: `<out>_adapter/`
(the adapter alone: peft's adapter_model.safetensors and adapter_config.json, for
PeftModel.from_pretrained on the base) and `<out>/` (the adapter merged into the base: a
plain Hugging Face model). Both are built from one *reference*, an fp32 PeftModel holding
exactly the trained weights, and verified against it before they replace earlier ones:
the adapter reloaded on the base from its source, the merged model through framework/hf/write.py's
write_verified, and the merged logits against base-plus-adapter logits."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedTokenizerBase,
)

from framework.config.schema import first_line
from framework.hf.write import (
    ExportError,
    empty_model,
    load_exactly,
    model_bytes,
    probe_logits,
    probe_tokens,
    write_verified,
    written_whole,
)
from framework.run.files import ADAPTER_SUFFIX

# Merged weights against base plus adapter, both fp32, as a share of the largest logit:
# float summation order only (SmolLM2's 30 layers: 1.75e-4 apart on logits of ~25).
MERGE_TOLERANCE = 1e-4


def logit_gap(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest logit difference relative to the largest logit (at least 1)."""
    return ((got - want).abs().max() / want.abs().max().clamp(min=1.0)).item()


def adapter_dir(out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ADAPTER_SUFFIX)


def holding_adapter(
    config: PreTrainedConfig,
    state: dict[str, torch.Tensor],
    generation: GenerationConfig,
    lora: LoraConfig,
    *,
    source: str,
) -> PeftModel:
    """The reference of a live run: `config`'s model with `lora`'s adapters, holding
    exactly `state` (every weight, base and adapter, as the engine names them), in fp32."""
    dtype = next(t.dtype for t in state.values() if t.is_floating_point())
    model = get_peft_model(
        empty_model(config, dtype), copy.deepcopy(lora), autocast_adapter_dtype=False
    )
    load_exactly(model, state, source)
    model.generation_config = copy.deepcopy(generation)
    return model.float().eval()


def adapter_on_base(
    base: str,
    base_dtype: torch.dtype,
    lora: LoraConfig,
    trained: dict[str, torch.Tensor],
    *,
    source: str,
) -> PeftModel:
    """The reference of a checkpoint: the base from `base` (as training loaded it, in
    `base_dtype`) with `lora`'s adapters holding `trained` (the trainable weights only),
    in fp32. Raises ExportError unless `trained` is exactly the trainable weights."""
    model = AutoModelForCausalLM.from_pretrained(base, dtype=base_dtype, use_safetensors=True)
    model = get_peft_model(model, copy.deepcopy(lora), autocast_adapter_dtype=False).float()
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if trained.keys() != trainable:
        missing, extra = sorted(trainable - trained.keys()), sorted(trained.keys() - trainable)
        raise ExportError(
            f"the adapter weights of {source} do not fit its adapter config: missing "
            f"{missing[:3]}, unexpected {extra[:3]}"
        )
    model.load_state_dict({k: v.float() for k, v in trained.items()}, strict=False)
    return model.eval()


def write_adapter_verified(
    reference: PeftModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    base: str,
    base_dtype: torch.dtype,
) -> Path:
    """Write the adapter alone to `<out_dir>_adapter` and the merged model (in
    `base_dtype`) to `out_dir`, each verified; neither replaces an earlier export unless
    both verified. Returns `out_dir`."""
    out_dir, adapter_out = Path(out_dir), adapter_dir(out_dir)
    probe = probe_tokens(reference)
    want = probe_logits(reference, probe)
    staging = adapter_out.with_name(adapter_out.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    reference.peft_config["default"].base_model_name_or_path = base
    with written_whole(staging, adapter_out, needed=model_bytes(reference, trainable_only=True)):
        reference.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
    try:
        verify_adapter_export(staging, reference, want, probe, base=base, base_dtype=base_dtype)
    except ExportError as err:
        raise ExportError(f"{err}; {adapter_out} was left as it was") from None
    try:
        merged = merged_checked(reference, probe, want)
    except ExportError as err:
        raise ExportError(f"{err}; {out_dir} and {adapter_out} were left as they were") from None
    for param in merged.parameters():
        # Weights only: model.to(dtype) would also round the rotary frequencies, buffers
        # that a model loaded in that dtype keeps in fp32.
        param.data = param.data.to(base_dtype)
    write_verified(merged, tokenizer, out_dir)
    shutil.rmtree(adapter_out, ignore_errors=True)
    staging.rename(adapter_out)
    return out_dir


def verify_adapter_export(
    directory: Path,
    reference: PeftModel,
    want: torch.Tensor,
    probe: torch.Tensor,
    *,
    base: str,
    base_dtype: torch.dtype,
) -> None:
    """Reload the adapter as a user would (PeftModel.from_pretrained on the base loaded
    from `base`) and check it: every adapter tensor of `reference`, none empty, the same
    values, and the same logits as `reference` (MERGE_TOLERANCE)."""
    try:
        model = AutoModelForCausalLM.from_pretrained(base, dtype=base_dtype, use_safetensors=True)
        reloaded = PeftModel.from_pretrained(model.float(), directory).eval()
    except Exception as err:  # whatever stops a user from loading it rejects the export
        raise ExportError(
            f"the adapter in {directory} does not reload on {base}: {first_line(err)}"
        ) from None
    got, expected = get_peft_model_state_dict(reloaded), get_peft_model_state_dict(reference)
    problem = None
    for name in sorted(got.keys() ^ expected.keys()):
        problem = f"adapter tensor {name} is {'missing' if name in expected else 'unexpected'}"
        break
    for name, weight in expected.items():
        if problem is None and (weight.numel() == 0 or not torch.equal(got[name], weight)):
            problem = f"adapter tensor {name} is empty or differs from the trained one"
    gap = logit_gap(probe_logits(reloaded, probe), want)
    if problem is None and not gap <= MERGE_TOLERANCE:
        problem = f"its logits differ from the trained model's by {gap:.3g} of the largest"
    if problem is not None:
        raise ExportError(f"the adapter in {directory} does not reload as written: {problem}")


def merge_adapter_dir(directory: Path, base: str, out_dir: Path) -> Path:
    """A peft adapter directory (ours or anyone's) merged into its base, loaded from
    `base` (a resolved model), written through write_verified to `out_dir`, in fp32."""
    try:
        model = AutoModelForCausalLM.from_pretrained(
            base, dtype=torch.float32, use_safetensors=True
        )
        reference = PeftModel.from_pretrained(model, directory).eval()
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except Exception as err:
        raise ExportError(
            f"the adapter in {directory} does not load on {base}: {first_line(err)}"
        ) from None
    probe = probe_tokens(reference)
    merged = merged_checked(reference, probe, probe_logits(reference, probe))
    return write_verified(merged, tokenizer, out_dir)


def merged_checked(reference: PeftModel, probe: torch.Tensor, want: torch.Tensor):
    """`reference`'s adapter merged into its base (peft's merge_and_unload, which
    consumes `reference`); ExportError unless the merged logits on `probe` equal `want`,
    base plus adapter, within MERGE_TOLERANCE."""
    merged = reference.merge_and_unload()
    gap = logit_gap(probe_logits(merged, probe), want)
    if not gap <= MERGE_TOLERANCE:
        raise ExportError(
            f"the merged model's logits differ from base plus adapter by {gap:.3g} of the "
            f"largest (allowed {MERGE_TOLERANCE:g})"
        )
    return merged
