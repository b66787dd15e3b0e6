"""Hugging Face directories written and verified: a *reference*, a model that holds exactly
the weights to export, written as safetensors with the config, the tokenizer (chat
template included) and a generation config; then reloaded from disk and checked against
the reference before the directory replaces the previous one. Both exports
(framework/hf/engine_export.py from training, framework/hf/checkpoint_export.py from a
checkpoint) go through `write_verified`: one path writes and verifies them all."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.initialization import no_init_weights

from framework.config.schema import ConfigError, first_line
from framework.data.templates import stop_token_ids
from framework.run.files import space_report

MAX_SHARD_SIZE = "5GB"
# The largest logit difference allowed between the reloaded model and the reference: the
# same weights, attention and device give the same logits (in tests, bit for bit).
_LOGIT_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
_PROBE_SHAPE = (3, 24)  # token sequences whose logits are compared


class ExportError(ConfigError):
    """An export cannot be made or did not reload as written; the message names the
    directory and the first problem. The previous export is left in place."""


def holding(
    config: PreTrainedConfig,
    state: dict[str, torch.Tensor],
    generation: GenerationConfig,
    *,
    source: str,
) -> PreTrainedModel:
    """The reference: a model built from `config` that holds exactly `state` (its tensors,
    not copies; tied aliases and buffers may be absent), in eval mode, with `generation`
    as its generation config. Raises ExportError if `state` does not fit `config`."""
    dtype = next(t.dtype for t in state.values() if t.is_floating_point())
    model = empty_model(config, dtype)
    load_exactly(model, state, source)
    model.generation_config = copy.deepcopy(generation)
    return model.eval()


def empty_model(config: PreTrainedConfig, dtype: torch.dtype) -> PreTrainedModel:
    """`config`'s model with uninitialised weights, for a state to be assigned to."""
    with no_init_weights():
        return AutoModelForCausalLM.from_config(
            # transformers' default attention, which the reloaded export also gets
            copy.deepcopy(config),
            dtype=dtype,
            attn_implementation=None,
        )


def load_exactly(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Assign `state` to `model`'s weights; ExportError unless it holds every one of them
    (tied aliases and buffers excepted) and nothing else."""
    try:
        loaded = model.load_state_dict(state, strict=False, assign=True)
    except RuntimeError as err:
        raise ExportError(f"the weights of {source} do not fit its model config: {err}") from None
    model.tie_weights()  # assigning the embedding broke its tie to the output layer
    tied = (
        dict(model.named_parameters(remove_duplicate=False)).keys()
        - dict(model.named_parameters()).keys()
    )
    missing = set(loaded.missing_keys) - tied - dict(model.named_buffers()).keys()
    if missing or loaded.unexpected_keys:
        raise ExportError(
            f"the weights of {source} do not fit its model config: missing "
            f"{sorted(missing)[:3]}, unexpected {sorted(loaded.unexpected_keys)[:3]}"
        )


def write_verified(
    reference: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    max_shard_size: str = MAX_SHARD_SIZE,
) -> Path:
    """Write `reference` and `tokenizer` as a Hugging Face directory next to `out_dir`,
    verify it from disk (`verify_export`), and only then put it in `out_dir`'s place.
    On failure `out_dir` is untouched and the rejected files stay in `<out_dir>.tmp`."""
    out_dir = Path(out_dir)
    staging = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with written_whole(staging, out_dir, needed=model_bytes(reference)):
        save_hf(reference, tokenizer, staging, max_shard_size=max_shard_size)
    try:
        verify_export(staging, reference, tokenizer)
    except ExportError as err:
        raise ExportError(f"{err}; {out_dir} was left as it was") from None
    _replace(staging, out_dir)
    return out_dir


def model_bytes(model: torch.nn.Module, *, trainable_only: bool = False) -> int:
    params = [p for p in model.parameters() if p.requires_grad or not trainable_only]
    return sum(p.numel() * p.element_size() for p in params)


@contextlib.contextmanager
def written_whole(staging: Path, out_dir: Path, *, needed: int) -> Iterator[None]:
    """Writes into `staging` inside: if one fails (no space, a quota, an I/O error), the
    partial `staging` goes and ExportError says what failed and the space needed;
    `out_dir`, not yet touched, stays as it was."""
    try:
        yield
    except (OSError, RuntimeError) as err:
        shutil.rmtree(staging, ignore_errors=True)
        raise ExportError(
            f"the export to {out_dir} could not be written ({first_line(err)}); "
            f"{out_dir} was left as it was. {space_report(out_dir.parent, needed)}"
        ) from None


def save_hf(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    directory: Path,
    *,
    max_shard_size: str = MAX_SHARD_SIZE,
) -> None:
    """safetensors (sharded above `max_shard_size`), config, generation config that stops
    at the chat template's end of turn, tokenizer with its chat template."""
    generation = model.generation_config
    generation.eos_token_id = stop_token_ids(tokenizer, generation.eos_token_id)
    generation.pad_token_id = tokenizer.pad_token_id
    # Training turns the KV cache off (packed rows must not attend across examples); an
    # export is for generating, where the cache saves recomputing the whole prefix.
    model.config.use_cache = generation.use_cache = True
    model.save_pretrained(directory, max_shard_size=max_shard_size)
    tokenizer.save_pretrained(directory)


def verify_export(
    directory: Path, reference: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> None:
    """Reload `directory` as a user would (safetensors only, no remote code) and check it:
    the same parameter names, shapes, dtypes and values as `reference` (nothing missing,
    extra or left at random init), the same logits on a few token sequences (within
    `_LOGIT_TOLERANCE`), and the tokenizer's chat template. Raises ExportError naming
    the first difference and the directory."""
    try:
        reloaded = AutoModelForCausalLM.from_pretrained(
            directory, dtype=reference.dtype, use_safetensors=True, trust_remote_code=False
        )
        template = AutoTokenizer.from_pretrained(directory).chat_template
    except Exception as err:  # whatever stops a user from loading it rejects the export
        raise ExportError(f"the export in {directory} does not reload: {first_line(err)}") from None
    problem = _parameter_difference(reloaded, reference) or _logit_difference(reloaded, reference)
    if problem is None and template != tokenizer.chat_template:
        problem = "the tokenizer lost its chat template"
    if problem is not None:
        raise ExportError(f"the export in {directory} does not reload as written: {problem}")


def _parameter_difference(reloaded: PreTrainedModel, reference: PreTrainedModel) -> str | None:
    got, want = dict(reloaded.named_parameters()), dict(reference.named_parameters())
    for name in sorted(got.keys() ^ want.keys()):
        return f"parameter {name} is {'missing' if name in want else 'unexpected'}"
    for name, weight in want.items():
        if (got[name].dtype, got[name].shape) != (weight.dtype, weight.shape):
            return (
                f"parameter {name} is {got[name].dtype} {list(got[name].shape)}, "
                f"written as {weight.dtype} {list(weight.shape)}"
            )
        if not torch.equal(got[name], weight):
            gap = (got[name].double() - weight.double()).abs().max().item()
            return f"parameter {name} differs from the written weights (by up to {gap:.3g})"
    return None


def _logit_difference(reloaded: PreTrainedModel, reference: PreTrainedModel) -> str | None:
    probe = probe_tokens(reference)
    gap = (probe_logits(reloaded, probe) - probe_logits(reference, probe)).abs().max().item()
    allowed = _LOGIT_TOLERANCE.get(reference.dtype, _LOGIT_TOLERANCE[torch.bfloat16])
    if not gap <= allowed:
        return (
            f"its logits differ from those of the written weights by up to {gap:.3g} "
            f"(allowed {allowed:g}): config.json does not describe the trained model"
        )
    return None


def probe_tokens(model: torch.nn.Module) -> torch.Tensor:
    """A few fixed rows of random token ids from `model`'s vocabulary."""
    vocab = model.get_input_embeddings().num_embeddings
    return torch.randint(0, vocab, _PROBE_SHAPE, generator=torch.Generator().manual_seed(0))


def probe_logits(model: torch.nn.Module, probe: torch.Tensor) -> torch.Tensor:
    """`model`'s logits for the token rows `probe`, in float64."""
    with torch.no_grad():
        return model(input_ids=probe, use_cache=False).logits.double()


def _replace(staging: Path, out_dir: Path) -> None:
    """Put `staging` in `out_dir`'s place; the old export goes once the new one is there."""
    old = out_dir.with_name(out_dir.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out_dir.exists():
        os.replace(out_dir, old)
    os.replace(staging, out_dir)
    shutil.rmtree(old, ignore_errors=True)
