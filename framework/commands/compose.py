"""Hydra's side of the config, the only module that imports Hydra: the schemas
registered for conf/'s defaults lists, and each composed config turned into its checked
dataclass (paths made absolute, checks applied) on the driver, before any worker starts.

The suite's family names are checked here, where the whole config is assembled, so that
the schemas themselves depend on nothing of the framework."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf, open_dict

from framework.config.checks import check_train_config
from framework.config.command_checks import (
    check_chat_config,
    check_device_and_dtype,
    check_eval_config,
)
from framework.config.commands import (
    ChatConfig,
    EvalConfig,
    ExportConfig,
    ImproveConfig,
    ServeConfig,
)
from framework.config.presets import CONF_DIR
from framework.config.schema import ConfigError, SourceConfig, TrainConfig
from framework.config.sections import RENAMED_KEYS
from framework.eval.verifiers import check_verifier
from framework.suite.build import check_family_names, check_suite


def register_schemas() -> None:
    """Make the schemas available to the defaults lists of conf/train.yaml,
    launch/conf/*.yaml (chat, eval, export, improve, serve)."""
    schemas = {
        "train_schema": _train_schema(),
        "chat_schema": ChatConfig,
        "eval_schema": EvalConfig,
        "export_schema": ExportConfig,
        "improve_schema": ImproveConfig,
        "serve_schema": ServeConfig,
    }
    store = ConfigStore.instance()
    for name, schema in schemas.items():
        store.store(name=name, node=schema)


def _train_schema() -> DictConfig:
    """TrainConfig's schema plus each renamed key (RENAMED_KEYS) as a reference to its new
    key: Hydra then takes an old key from a command line or a YAML file, for from_hydra to
    name its new key in one line (instead of Hydra's unknown-key error over several lines),
    and `--cfg job` shows where each old key went."""
    schema = OmegaConf.structured(TrainConfig)
    for old, new in RENAMED_KEYS.items():
        section, name = old.split(".")
        with open_dict(schema[section]):
            schema[section][name] = _reference(new)
    return schema


def _reference(key: str) -> str:
    return "${" + key + "}"


def _without_renamed_keys(raw: DictConfig) -> DictConfig:
    """`raw` on TrainConfig's own schema: ConfigError naming the new key of any renamed key
    given a value of its own."""
    values = OmegaConf.to_container(raw)  # interpolations kept, resolved on TrainConfig
    for old, new in RENAMED_KEYS.items():
        section, name = old.split(".")
        if values[section].pop(name) != _reference(new):
            raise ConfigError(f"{old} is now {new}")
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), values)


def compose_train_config(overrides: list[str]) -> TrainConfig:
    """conf/train.yaml with Hydra overrides, checked, as launch/train.py composes it: for
    code that is not a Hydra app (tests, benchmarks). Hydra is initialised once per
    process, most of the cost of composing."""
    register_schemas()
    if not GlobalHydra.instance().is_initialized():
        initialize_config_dir(config_dir=str(CONF_DIR), version_base=None)
    return from_hydra(compose(config_name="train", overrides=overrides))


def from_hydra(raw: DictConfig) -> TrainConfig:
    """Resolve a composed Hydra config into checked dataclasses with absolute paths."""
    cfg: TrainConfig = OmegaConf.to_object(_without_renamed_keys(raw))
    cfg.run.output_dir = _absolute(cfg.run.output_dir)
    cfg.run.cache_dir = _absolute(cfg.run.cache_dir)
    cfg.run.checkpoint_dir = _absolute(cfg.run.checkpoint_dir)
    if cfg.checkpoint.resume not in ("auto", "never"):
        cfg.checkpoint.resume = _absolute(cfg.checkpoint.resume)
    if cfg.data.path is not None:
        cfg.data.sources = [SourceConfig(path=cfg.data.path)]
        cfg.data.path = None
    for source in [*cfg.data.sources, *cfg.data.eval_sources]:
        source.path = _local_or_hub(source.path)
    check_train_config(cfg)
    check_suite(cfg.data.suite, "data.suite")
    for group in ("sources", "eval_sources"):
        for index, source in enumerate(getattr(cfg.data, group)):
            if source.verifier is not None:
                _check_verifier(source.verifier, f"data.{group}[{index}].verifier")
    return cfg


# The values a model preset sets for fine-tuning, printed at the start of a run.
HYPERPARAMETERS = (
    "trainer.max_steps",
    "trainer.lr",
    "trainer.warmup_steps",
    "trainer.lr_schedule",
    "trainer.micro_batch_size",
    "data.max_seq_len",
)


def hyperparameter_line(cfg: TrainConfig, preset: str, overrides: list[str]) -> str:
    """One line with the fine-tuning hyper-parameters and where each came from: the
    command line (marked *), else the adapter's group (its learning rate), the model
    preset or the schema's defaults."""
    given = {o.split("=", 1)[0].lstrip("+") for o in overrides}
    values = []
    for key in HYPERPARAMETERS:
        group, name = key.split(".")
        value = getattr(getattr(cfg, group), name)
        values.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
        values[-1] += "*" if key in given else ""
    origin = f"model={preset}, adapter={cfg.adapter.method}"
    return f"hyper-parameters ({origin}; * given on the command line): " + " ".join(values)


def _local_or_hub(path: str) -> str:
    """Absolute path for anything that exists locally or is written as a path; hub names
    (`org/name`) stay as they are."""
    if Path(path).expanduser().exists() or path.startswith(("/", ".", "~")):
        return _absolute(path)
    return path


def _absolute(path: str) -> str:
    # Ray workers run in their own working directories, so relative paths must be fixed
    # against the directory the user launched from.
    return str(Path(os.path.expanduser(path)).resolve())


def _require_model(raw: DictConfig, what: str, example: str) -> None:
    if OmegaConf.is_missing(raw, "model"):
        raise ConfigError(f"model: give the model to {what}, e.g. {example}")


def _check_verifier(name: str, key: str) -> None:
    try:
        check_verifier(name, key)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _check_families(names: list[str], key: str) -> None:
    try:
        check_family_names(names, key)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def chat_config(raw: DictConfig) -> ChatConfig:
    """The composed Hydra config of launch/chat.py as a checked ChatConfig."""
    _require_model(raw, "chat with", "model=outputs/smollm2-sft/hf or model=smollm2_135m")
    cfg: ChatConfig = OmegaConf.to_object(raw)
    check_chat_config(cfg)
    return cfg


def eval_config(raw: DictConfig) -> EvalConfig:
    """The composed Hydra config of launch/eval.py as a checked EvalConfig."""
    cfg: EvalConfig = OmegaConf.to_object(raw)
    check_eval_config(cfg)
    if cfg.held_out is not None:
        _check_families(cfg.held_out, "held_out")
    return cfg


def export_config(raw: DictConfig) -> ExportConfig:
    """The composed Hydra config of launch/export.py as an ExportConfig."""
    missing = sorted(OmegaConf.missing_keys(raw))
    if missing:
        raise ConfigError(
            f"missing {' and '.join(missing)}: python launch/export.py model=<a step_* "
            "directory, run.checkpoint_dir for its newest, a .gguf file or a preset> "
            "out=<directory>"
        )
    cfg: ExportConfig = OmegaConf.to_object(raw)
    if cfg.format not in ("hf", "gguf"):
        raise ConfigError(f"format={cfg.format!r} is not one of ['hf', 'gguf']")
    if cfg.format == "gguf":
        from framework.hf.gguf_export import GGUF_TYPES  # gguf loads only when asked for

        if cfg.gguf_type not in GGUF_TYPES:
            raise ConfigError(f"gguf_type={cfg.gguf_type!r} is not one of {list(GGUF_TYPES)}")
        if not cfg.out.endswith(".gguf"):
            raise ConfigError(f"out={cfg.out!r}: format=gguf writes a file; name it *.gguf")
    return cfg


def improve_config(raw: DictConfig) -> ImproveConfig:
    """The composed Hydra config of launch/improve.py as a checked ImproveConfig."""
    _require_model(
        raw, "improve", "model=outputs/smollm2-sft/hf (python launch/train.py writes it)"
    )
    cfg: ImproveConfig = OmegaConf.to_object(raw)
    cfg.out = _absolute(cfg.out)
    if Path(cfg.model).expanduser().exists():
        cfg.model = _absolute(cfg.model)
    if cfg.feedback is not None:
        cfg.feedback = _absolute(cfg.feedback)
    for key in ("rounds", "prompts_per_family", "samples", "max_new_tokens", "workers"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be > 0")
    if cfg.samples < 2 or cfg.temperature <= 0:
        raise ConfigError(
            f"samples={cfg.samples}, temperature={cfg.temperature}: a pair needs two different "
            "answers to one prompt, so sample at least 2 at a temperature above 0"
        )
    _check_families(cfg.held_out, "held_out")
    return cfg


def serve_config(raw: DictConfig) -> ServeConfig:
    """The composed Hydra config of launch/serve.py as a checked ServeConfig."""
    _require_model(raw, "serve", "model=outputs/smollm2-sft/hf or model=smollm2_135m")
    cfg: ServeConfig = OmegaConf.to_object(raw)
    check_device_and_dtype(cfg)
    if not 0 < cfg.port < 65536:
        raise ConfigError(f"port={cfg.port} is not a TCP port (1 to 65535)")
    for key in ("max_request_bytes", "max_tokens", "max_concurrent", "log_retention_days"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be > 0")
    if cfg.max_model_len is not None and cfg.max_model_len <= cfg.max_tokens:
        raise ConfigError(
            f"max_model_len={cfg.max_model_len} leaves no room for a prompt beside "
            f"max_tokens={cfg.max_tokens} reply tokens; raise it, or null for the model's context"
        )
    share = cfg.cache_memory_share
    if share is not None and not 0 < share < 1:
        raise ConfigError(f"cache_memory_share={share} must be in (0, 1), or null")
    if cfg.log_dir is not None:
        cfg.log_dir = _absolute(cfg.log_dir)
    return cfg
