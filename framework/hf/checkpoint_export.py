"""The export of a checkpoint (launch/export.py, and the resolver's checkpoint names): the
trained weights read from a committed checkpoint of any ZeRO stage and number of ranks,
written as a Hugging Face directory through framework/hf/write.py's write_verified (an
adapter run's: through framework/hf/adapter_export.py, merged and alone); or any other
model name, converted or copied through the resolver."""

from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path

import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

from framework.config.commands import ExportConfig
from framework.config.saved import load_train_config
from framework.config.schema import ConfigError
from framework.hf import adapter_export
from framework.hf.resolve import model_source, resolve_model
from framework.hf.write import ExportError, holding, write_verified
from framework.model.adapters import lora_config
from framework.model.build import TORCH_DTYPES, generation_config, model_config
from framework.run.checkpoints import committed, read_progress, weights_only_loading
from framework.run.files import COMMIT_MARKER, CONFIG_FILE, TOKENIZER_DIR
from framework.run.integrity import damage


def find_checkpoint(path: str | Path) -> Path:
    """`path` when it is a step_* checkpoint, else the newest committed one under it (a
    run.checkpoint_dir); ExportError if it is damaged (framework/run/integrity.py's damage)."""
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
        found = committed(path)
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
    `write_verified`; format=gguf: written so to a temporary directory, then as cfg.out's
    GGUF file (framework/hf/gguf_export.py)."""
    if cfg.format == "gguf":
        from framework.hf.gguf_export import export_gguf

        out = Path(cfg.out).absolute()
        out.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".export-") as staging:
            hf_dir = export_model(dataclasses.replace(cfg, format="hf", out=f"{staging}/hf"))
            gap = export_gguf(hf_dir, out, cfg.gguf_type)
        print(
            f"{out}: {cfg.gguf_type}, read back through transformers' GGUF loader with logits "
            f"within {gap:.1e} of the largest of the exported model's; Ollama: "
            f"{out.with_name('Modelfile')}",
            flush=True,
        )
        return out
    path = Path(cfg.model).expanduser()
    if path.is_dir() and (path.name.startswith("step_") or committed(path)):
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
    progress = read_progress(path)
    tokenizer = AutoTokenizer.from_pretrained(path / TOKENIZER_DIR)
    trained = checkpoint_weights(path, progress["zero_stage"])
    source = model_source(cfg)
    if cfg.adapter.method == "none":
        config = model_config(cfg.model, tokenizer, source=source)
        generation = generation_config(source, config)
        return write_verified(
            holding(config, trained, generation, source=str(path)), tokenizer, out_dir
        )
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
        with weights_only_loading():
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
