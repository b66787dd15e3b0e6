"""Checkpoints, the only module that knows what one holds: `<root>/step_<N>/` has
DeepSpeed's files (sharded as ZeRO shards them; with an adapter, only the trainable
weights and their optimizer state: the frozen base is rebuilt from its source), every
rank's RNG state, the run's progress (`progress.json`: step, layout, sampler position,
counters, the data's identity), the resolved config and the tokenizer, and a COMMITTED
marker that rank 0 writes last, once every rank has finished. Only committed checkpoints
count; files are read through torch.load(weights_only=True). Names: framework/run_dir.py."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import random
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist

from framework.checkpoint_integrity import damage, manifest, set_aside_damaged
from framework.config.saved import load_train_config, save_train_config
from framework.config.schema import ConfigError, TrainConfig, first_line
from framework.data import identity
from framework.model.adapters import adapter_differences, uses_adapter
from framework.run_dir import (
    COMMIT_MARKER,
    CONFIG_FILE,
    PROGRESS_FILE,
    RNG_FILE,
    TOKENIZER_DIR,
    UNIVERSAL_DIR,
    space_report,
    write_json,
)


class CheckpointError(ConfigError):
    """A checkpoint cannot be used; the message names the file and what to do."""


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def committed(root: str | Path) -> list[Path]:
    """Committed checkpoints under `root`, oldest first."""
    if not Path(root).is_dir():
        return []
    return sorted(p.parent for p in Path(root).glob(f"step_*/{COMMIT_MARKER}"))


def read_progress(path: str | Path) -> dict:
    """The run's position saved with a checkpoint: step, world_size, sampler, counters."""
    file = Path(path) / PROGRESS_FILE
    if not Path(path).is_dir():
        raise CheckpointError(
            f"checkpoint {path} does not exist; pass checkpoint.resume=auto or "
            "the path of a step_* directory under run.checkpoint_dir"
        )
    if not (Path(path) / COMMIT_MARKER).exists():
        raise CheckpointError(
            f"{path} is not a complete checkpoint (no {COMMIT_MARKER} marker: its save never "
            "finished); pass checkpoint.resume=<an earlier step_* directory> or auto"
        )
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(
            f"{file} is unreadable ({err}); the checkpoint is damaged: use an earlier "
            "step_* directory (checkpoint.resume=<path> to train, model=<path> to export)"
        ) from None


def resume_point(cfg: TrainConfig) -> Path | None:
    """The checkpoint a start or a restart continues from: checkpoint.resume's choice, or a
    newer committed one in run.checkpoint_dir (this run's own, after a worker restart)."""
    found = committed(cfg.run.checkpoint_dir)
    newest = found[-1] if found else None
    if cfg.checkpoint.resume in ("auto", "never"):
        return newest
    chosen = Path(cfg.checkpoint.resume)
    if newest is not None and read_progress(newest)["step"] > read_progress(chosen)["step"]:
        return newest
    return chosen


def check_resume(cfg: TrainConfig) -> Path | None:
    """On the driver, before any worker starts: checkpoint.resume's choice, checked and
    verified (checkpoint_integrity.py): with checkpoint.resume=auto a damaged newest one is
    set aside (renamed damaged_step_*, with a warning) for the newest intact one; an
    explicit damaged checkpoint.resume=<path> stops the run, naming the file; so do other
    adapter settings, and other data unless allowed (data/identity.py's check_resume)."""
    found = committed(cfg.run.checkpoint_dir)
    if cfg.checkpoint.resume == "never" and found:
        raise CheckpointError(
            f"checkpoint.resume=never, but run.checkpoint_dir={cfg.run.checkpoint_dir} holds "
            f"checkpoints of an earlier run ({found[-1].name}); set checkpoint.resume=auto to "
            "continue it, or choose another run.output_dir (or run.checkpoint_dir)"
        )
    if cfg.checkpoint.resume == "auto":
        set_aside_damaged(found)
    else:
        chosen = read_progress(cfg.checkpoint.resume)["step"]
        if found and read_progress(found[-1])["step"] > chosen:
            raise CheckpointError(
                f"checkpoint.resume={cfg.checkpoint.resume} is at step {chosen}, but "
                f"run.checkpoint_dir={cfg.run.checkpoint_dir} holds a later one "
                f"({found[-1].name}) that new checkpoints would mix with; set "
                "run.checkpoint_dir to a new directory"
            )
        problem = damage(Path(cfg.checkpoint.resume))
        if problem:
            raise CheckpointError(
                f"checkpoint.resume={cfg.checkpoint.resume} is damaged: {problem}; pass an "
                "earlier step_* directory, or checkpoint.resume=auto for the newest intact one"
            )
    chosen = resume_point(cfg)
    if chosen is not None:
        _check_adapter_resume(chosen, cfg)
        identity.check_resume(chosen, read_progress(chosen), cfg)
    return chosen


def _check_adapter_resume(path: Path, cfg: TrainConfig) -> None:
    """A checkpoint holds the weights of one adapter shape (or the whole model): resuming
    it with other adapter.* values cannot load, or would silently train something else.
    An adapter checkpoint resumes on the number of ranks that wrote it only: DeepSpeed's
    conversion to another layout is not tested without the frozen weights."""
    differences = adapter_differences(load_train_config(path / CONFIG_FILE).adapter, cfg.adapter)
    if differences:
        raise CheckpointError(
            f"{path} was trained with another adapter ({', '.join(differences)}); resume "
            "with the checkpoint's adapter settings, or start a new run (another "
            "run.output_dir, or checkpoint.resume=never with a new run.checkpoint_dir)"
        )
    written_by = read_progress(path)["world_size"]
    if uses_adapter(cfg.adapter) and written_by != cfg.cluster.num_workers:
        raise CheckpointError(
            f"{path} is an adapter checkpoint of {written_by} ranks; adapter runs resume on "
            f"the number of ranks that wrote them: set cluster.num_workers={written_by}"
        )


# ------------------------------------------------------------------------------ safe loading

# DeepSpeed's own files pickle these alongside tensors; nothing else may be unpickled.
_DEEPSPEED_GLOBALS = [
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
    "deepspeed.utils.tensor_fragment.fragment_address",
]


def _allowed_globals() -> list:
    allowed = []
    for dotted in _DEEPSPEED_GLOBALS:
        module, _, name = dotted.rpartition(".")
        with contextlib.suppress(ImportError, AttributeError):  # then not in its files
            allowed.append(getattr(__import__(module, fromlist=[name]), name))
    return allowed


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Every torch.load inside (DeepSpeed's included, which asks for weights_only=False)
    unpickles only tensors, plain containers and DeepSpeed's few data classes: a
    tampered checkpoint cannot run code. A damaged file raises CheckpointError."""
    original = torch.load

    def safe_load(file, *args, **kwargs):
        kwargs["weights_only"] = True
        try:
            with torch.serialization.safe_globals(_allowed_globals()):
                return original(file, *args, **kwargs)
        except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile) as err:
            raise CheckpointError(
                f"{file} cannot be loaded ({first_line(err)}): the checkpoint is damaged or "
                "not one of ours; use an earlier step_* directory (checkpoint.resume=<path> to "
                "train, model=<path> to export)"
            ) from None

    torch.load = safe_load
    try:
        yield
    finally:
        torch.load = original


# ------------------------------------------------------------------------------ RNG states


def _rng_state() -> dict:
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    return {
        "python": (version, internal, gauss),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _rng_file(path: Path, rank: int) -> Path:
    return path / RNG_FILE.format(rank=rank)


# ------------------------------------------------------------------------------ save


def save(
    engine: deepspeed.DeepSpeedEngine,
    cfg: TrainConfig,
    step: int,
    *,
    sampler_state: dict,
    totals: dict[str, float],
    tokenizer,
) -> Path:
    """Collective: every rank writes its shards and RNG state, rank 0 the progress (the
    step, the layout it was written in, the sampler's position and the run's totals),
    config and tokenizer; then the commit marker, which records every file's size and
    CRC-32, each rank reading back the files it wrote (checkpoint_integrity.damage checks
    them); then checkpoints older than the newest `checkpoint.keep` go. If any
    rank cannot write (no space, a quota, an I/O error), every rank raises CheckpointError:
    the partial checkpoint is removed and the previous ones stay as they were."""
    root = Path(cfg.run.checkpoint_dir)
    path = step_dir(root, step)
    rank = dist.get_rank()
    failure = None
    if rank == 0:
        try:
            # Left by a save that never committed (maybe by another number of ranks).
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        except OSError as err:
            failure = err
    _stop_if_failed(failure, engine, path)
    try:
        # DeepSpeed's own `latest` file is written before all ranks are done: we do not
        # use it. Between its first and last barrier it only writes files.
        engine.save_checkpoint(
            str(root),
            tag=path.name,
            save_latest=False,
            exclude_frozen_parameters=uses_adapter(cfg.adapter),
        )
    except (OSError, RuntimeError) as err:
        failure = err
        dist.barrier()  # save_checkpoint's last barrier, where the other ranks now wait
    if failure is None:
        try:
            _save_our_files(engine, cfg, step, path, sampler_state, totals, tokenizer)
        except (OSError, RuntimeError) as err:
            failure = err
    _stop_if_failed(failure, engine, path)
    files = manifest(path)
    if rank == 0:
        write_json(path / COMMIT_MARKER, {"step": step, "files": files})
        # The newest committed checkpoint is the one just written and read back: intact.
        for old in committed(root)[: -cfg.checkpoint.keep]:
            shutil.rmtree(old)
    dist.barrier()
    return path


def _save_our_files(engine, cfg, step, path, sampler_state, totals, tokenizer) -> None:
    """Beside DeepSpeed's: this rank's RNG state; on rank 0 the progress, config and
    tokenizer (checkpoint_integrity.writer_rank knows who writes what: keep it so)."""
    torch.save(_rng_state(), _rng_file(path, dist.get_rank()))
    if dist.get_rank() != 0:
        return
    progress = {
        "step": step,
        "world_size": dist.get_world_size(),
        "micro_batch_size": cfg.trainer.micro_batch_size,
        "zero_stage": cfg.parallelism.zero_stage,
        # The dtype the (frozen) base was trained in: an adapter's export rebuilds it so.
        "precision": "bf16" if engine.bfloat16_enabled() else "fp32",
        "sampler": sampler_state,
        "totals": totals,
        "data": identity.of_run(cfg.run.output_dir),  # what check_resume compares
    }
    write_json(path / PROGRESS_FILE, progress)
    save_train_config(cfg, path / CONFIG_FILE)
    tokenizer.save_pretrained(path / TOKENIZER_DIR)


def _stop_if_failed(failure: BaseException | None, engine, path: Path) -> None:
    """Collective: if any rank's `failure` is set, remove the partial checkpoint at `path`
    and raise CheckpointError on every rank, naming what failed and the space it needs."""
    failures = [None] * dist.get_world_size()
    dist.all_gather_object(failures, None if failure is None else first_line(failure))
    if not any(failures):
        return
    root = path.parent
    if dist.get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
    dist.barrier()
    rank, reason = next((r, f) for r, f in enumerate(failures) if f)
    previous = committed(root)
    kept = f"the newest checkpoint is still {previous[-1]}" if previous else "no checkpoint yet"
    raise CheckpointError(
        f"checkpoint {path} could not be written (rank {rank}: {reason}); the partial one "
        f"was removed and {kept}. {space_report(root, _needed_bytes(engine, root))}: free "
        "space or set run.checkpoint_dir to a larger file system, then run the same "
        "command to resume"
    )


def _needed_bytes(engine: deepspeed.DeepSpeedEngine, root: Path) -> int:
    """About what one checkpoint takes: the newest one's recorded size, else the weights
    (as trained) plus fp32 master weights and Adam's two moments for the trainable ones."""
    previous = committed(root)
    if previous:
        marker = json.loads((previous[-1] / COMMIT_MARKER).read_text())
        if isinstance(marker, dict):
            return sum(f["size"] for f in marker["files"].values())
    total = 0
    for param in engine.module.parameters():
        numel = getattr(param, "ds_numel", param.numel())  # ZeRO-3 partitions hold a part
        total += numel * param.element_size() + (numel * 12 if param.requires_grad else 0)
    return total


# ------------------------------------------------------------------------------ load


def needs_universal(path: Path, world_size: int) -> bool:
    """A ZeRO 1-3 checkpoint written by another number of ranks loads only once converted
    to DeepSpeed's universal format (ZeRO-0 keeps whole optimizer states: no need)."""
    progress = read_progress(path)
    return progress["world_size"] != world_size and progress["zero_stage"] > 0


def to_universal(path: Path) -> Path:
    """Rank 0: convert `path` to DeepSpeed's universal checkpoint (once; atomically) in
    `path/universal`. Returns that directory."""
    from deepspeed.checkpoint.ds_to_universal import main as ds_to_universal

    target = path / UNIVERSAL_DIR
    if target.exists():
        return target
    staging = path / (UNIVERSAL_DIR + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    args = argparse.Namespace(  # ds_to_universal's command-line options
        input_folder=str(path),
        output_folder=str(staging),
        # One process each: this runs inside a training worker, whose cores are taken.
        num_extract_workers=1,
        num_merge_workers=1,
        keep_temp_folder=False,
        strict=True,
        inject_missing_state=True,
    )
    with weights_only_loading():
        ds_to_universal(args)
    os.replace(staging, target)
    return target


def load(engine: deepspeed.DeepSpeedEngine, path: Path, *, universal: bool, adapter: bool) -> dict:
    """Collective: restore engine, optimizer, scheduler and (same number of ranks) RNG
    states from the checkpoint at `path`; returns its progress. `adapter`: the checkpoint
    holds the trainable weights only, the frozen ones are the engine's own."""
    progress = read_progress(path)
    load_dir, tag = (path, UNIVERSAL_DIR) if universal else (path.parent, path.name)
    with weights_only_loading():
        loaded, _ = engine.load_checkpoint(
            str(load_dir),
            tag=tag,
            load_optimizer_states=True,
            load_lr_scheduler_states=True,
            load_module_strict=not adapter,
        )
        rng = _rng_file(path, dist.get_rank())
        if progress["world_size"] == dist.get_world_size() and rng.exists():
            _set_rng_state(torch.load(rng))
    if loaded is None:
        raise CheckpointError(
            f"DeepSpeed found no model states in {path}; the checkpoint is incomplete: pass "
            "checkpoint.resume=<an earlier step_* directory>"
        )
    return progress
