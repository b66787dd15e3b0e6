"""Hugging Face export: the trained weights, gathered from the live engine at any ZeRO stage
or read from a checkpoint of any stage and number of ranks, written as safetensors with
the config, the tokenizer (chat template included) and a generation config; then reloaded
from disk and checked against the weights before the directory replaces the previous one.

Both exports build a *reference*, a model that holds exactly the weights to export, and
hand it to `write_verified`: one path writes and verifies them all."""

from __future__ import annotations

import contextlib
import copy
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.initialization import no_init_weights

from framework import checkpoint
from framework.checkpoint_integrity import damage
from framework.config.commands import ExportConfig
from framework.config.saved import load_train_config
from framework.config.schema import ConfigError, first_line
from framework.data.templates import stop_token_ids
from framework.model.build import TORCH_DTYPES, generation_config, model_config
from framework.model.resolve import model_source, resolve_model
from framework.run_dir import COMMIT_MARKER, CONFIG_FILE, TOKENIZER_DIR, space_report

MAX_SHARD_SIZE = "5GB"
# The largest logit difference allowed between the reloaded model and the reference: the
# same weights, attention and device give the same logits (in tests, bit for bit).
_LOGIT_TOLERANCE = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
_PROBE_SHAPE = (3, 24)  # token sequences whose logits are compared


class ExportError(ConfigError):
    """An export cannot be made or did not reload as written; the message names the
    directory and the first problem. The previous export is left in place."""


# ------------------------------------------------------------------------------ from training


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
    from framework import adapter_export  # it builds on this module

    lora = model.peft_config["default"]
    reference = adapter_export.holding_adapter(
        model.get_base_model().config, state, model.generation_config, lora, source=source
    )
    dtype = next(t.dtype for t in state.values() if t.is_floating_point())
    adapter_export.write_adapter_verified(
        reference, tokenizer, out_dir, base=base, base_dtype=dtype
    )


# ------------------------------------------------------------------------------ from a checkpoint


def find_checkpoint(path: str | Path) -> Path:
    """`path` when it is a step_* checkpoint, else the newest committed one under it (a
    run.checkpoint_dir); ExportError if it is damaged (checkpoint_integrity.damage)."""
    path = Path(path)
    if not path.is_dir():
        raise ExportError(
            f"{path}: no such directory; give a step_* checkpoint directory or a "
            "run's checkpoint directory (run.checkpoint_dir, e.g. outputs/<run>/checkpoints)"
        )
    if path.name.startswith("step_"):
        if not (path / COMMIT_MARKER).exists():
            raise ExportError(
                f"{path}: incomplete checkpoint (no {COMMIT_MARKER} marker: its "
                "save never finished); give an earlier step_* directory"
            )
    else:
        found = checkpoint.committed(path)
        if not found:
            raise ExportError(
                f"{path}: holds no committed checkpoint (no step_*/"
                f"{COMMIT_MARKER}); give a step_* directory or run.checkpoint_dir"
            )
        path = found[-1]
    problem = damage(path)
    if problem:
        raise ExportError(f"{path} is damaged: {problem}; give an earlier step_* directory")
    return path


def export_model(cfg: ExportConfig) -> Path:
    """launch/export.py: the checkpoint cfg.model names, or the model any other form names
    (converted or copied through the resolver), written to cfg.out through
    `write_verified`."""
    path = Path(cfg.model).expanduser()
    if path.is_dir() and (path.name.startswith("step_") or checkpoint.committed(path)):
        try:
            step = find_checkpoint(path)
        except ExportError as err:
            raise ExportError(f"model={err}") from None
        print(f"exporting {step}", flush=True)
        return export_checkpoint(step, cfg.out)
    source = resolve_model(cfg.model, cfg.cache_dir)
    print(f"exporting {cfg.model} ({source})", flush=True)
    model = AutoModelForCausalLM.from_pretrained(
        source, dtype=torch.float32, use_safetensors=True, trust_remote_code=cfg.trust_remote_code
    )
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    return write_verified(model.eval(), tokenizer, cfg.out)


def export_checkpoint(checkpoint_dir: str | Path, out_dir: str | Path) -> Path:
    """Export the committed checkpoint at `checkpoint_dir` (any ZeRO stage, written by any
    number of ranks) in this process, without torch.distributed, through `write_verified`
    (an adapter run's: through adapter_export.py, merged and alone), in the architecture
    its config.yaml describes (nothing is downloaded for the built-in model). Returns
    `out_dir`."""
    path = Path(checkpoint_dir)
    cfg = load_train_config(path / CONFIG_FILE)
    progress = checkpoint.read_progress(path)
    tokenizer = AutoTokenizer.from_pretrained(path / TOKENIZER_DIR)
    trained = checkpoint_weights(path, progress["zero_stage"])
    source = model_source(cfg)
    if cfg.adapter.method == "none":
        config = model_config(cfg.model, tokenizer, source=source)
        generation = generation_config(source, config)
        return write_verified(
            holding(config, trained, generation, source=str(path)), tokenizer, out_dir
        )
    from framework import adapter_export  # it builds on this module
    from framework.model.adapters import lora_config

    dtype = TORCH_DTYPES[progress.get("precision", "fp32")]
    reference = adapter_export.adapter_on_base(
        source, dtype, lora_config(cfg.adapter), trained, source=str(path)
    )
    return adapter_export.write_adapter_verified(
        reference, tokenizer, out_dir, base=source, base_dtype=dtype
    )


def checkpoint_weights(path: Path, zero_stage: int) -> dict[str, torch.Tensor]:
    """The trained weights of the checkpoint at `path`: under ZeRO 1-3 the fp32 master
    weights, merged from every rank's optimizer shards by DeepSpeed's zero_to_fp32; under
    ZeRO-0 the model states, which hold the whole model."""
    try:
        with checkpoint.weights_only_loading():
            if zero_stage == 0:
                return torch.load(path / "mp_rank_00_model_states.pt", map_location="cpu")["module"]
            return get_fp32_state_dict_from_zero_checkpoint(str(path.parent), tag=path.name)
    except ConfigError:
        raise
    except (OSError, KeyError, ValueError) as err:
        raise ExportError(
            f"{path}: DeepSpeed's ZeRO-{zero_stage} files cannot be read ({err}); the "
            "checkpoint is incomplete or not one of ours: give another step_* directory"
        ) from None


# ------------------------------------------------------------------------------ write + verify


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
