"""A GGUF file (llama.cpp's format) as a model source: read through transformers' GGUF
support, dequantized, and written once as a plain Hugging Face directory (safetensors,
tokenizer with its chat template, generation config) under the cache, keyed by the file's
SHA-256. Every later run, rank and node that sees the cache reuses that directory."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from framework.config.schema import ConfigError

_CONVERSION_VERSION = "1"  # bump when the conversion below changes, so old caches are redone
# Tensor types every gguf release can dequantize without a quant kernel of its own.
_PLAIN_TYPES = {"F32", "F16", "BF16"}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def cached_hf_dir(gguf_file: Path, cache_dir: str, sha256: str | None = None) -> Path:
    """The Hugging Face directory converted from `gguf_file`, converting it unless the cache
    holds it. `sha256` skips hashing the file again when the caller has just checked it."""
    sha256 = sha256 or file_sha256(gguf_file)
    target = Path(cache_dir) / "models" / f"gguf-{_CONVERSION_VERSION}-{sha256[:20]}"
    if (target / "config.json").is_file():
        return target
    check_gguf(gguf_file)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".converting-"))
    try:
        _convert(gguf_file, staging)
        for made in [staging, *staging.iterdir()]:  # readable by every user of a shared cache
            made.chmod(0o755 if made.is_dir() else 0o644)
        os.rename(staging, target)  # atomic: a concurrent conversion of the same file may win
    except OSError:
        if not (target / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def check_gguf(gguf_file: Path) -> None:
    """One clear error, before any weight is read, for an architecture transformers cannot
    map or a tensor type gguf cannot dequantize."""
    from gguf import GGUFReader, quants
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    try:
        reader = GGUFReader(gguf_file)
    except (ValueError, OSError) as err:
        raise ConfigError(f"{gguf_file}: not a readable GGUF file ({err})") from None
    field = reader.fields["general.architecture"]
    architecture = bytes(field.parts[field.data[0]]).decode()
    if architecture not in GGUF_SUPPORTED_ARCHITECTURES:
        mapped = sorted(set(GGUF_SUPPORTED_ARCHITECTURES) - {"general", "tokenizer"})
        raise ConfigError(
            f"{gguf_file}: GGUF architecture {architecture!r} is not supported by "
            f"transformers' GGUF loader (it maps {mapped}); "
            "use the model's Hugging Face directory or hub id instead"
        )
    supported = _PLAIN_TYPES | {kind.name for kind in getattr(quants, "_type_traits", {})}
    unsupported = sorted({t.tensor_type.name for t in reader.tensors} - supported)
    if unsupported:
        raise ConfigError(
            f"{gguf_file}: tensor types {unsupported} cannot be dequantized by the installed "
            f"gguf package (it reads {sorted(supported)}); upgrade gguf or use another "
            "quantization of the model"
        )


def _convert(gguf_file: Path, out: Path) -> None:
    """Dequantize into a fresh model of the file's architecture (save_pretrained refuses
    the GGUF-loaded one, which keeps its quantization config) and save it in fp32."""
    where, name = str(gguf_file.parent), gguf_file.name
    print(f"converting {gguf_file} to a Hugging Face directory (once)", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.for_model(**_plain_config(loaded.config.to_dict()))
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = GenerationConfig.from_model_config(config)
    fresh.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _plain_config(values: dict) -> dict:
    values = {k: v for k, v in values.items() if k not in ("quantization_config", "dtype")}
    return {**values, "use_cache": True}
