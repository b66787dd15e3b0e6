"""Checkpoints, written and restored: `<root>/step_<N>/` has DeepSpeed's files (sharded as
ZeRO shards them; with an adapter, only the trainable weights and their optimizer state:
the frozen base is rebuilt from its source), every rank's RNG state, the run's progress
(`progress.json`: step, layout, sampler position, counters, the data's identity), the
resolved config and the tokenizer, and a COMMITTED marker that rank 0 writes last, once
every rank has finished. Only committed checkpoints count (framework/run/checkpoints.py
reads them); files are read through torch.load(weights_only=True). On the driver,
`check_resume` decides what a run resumes from. Names: framework/run/files.py."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
from pathlib import Path

import deepspeed
import numpy as np
import torch
import torch.distributed as dist

from framework.config.saved import load_train_config, save_train_config
from framework.config.schema import ConfigError, TrainConfig, first_line
from framework.data.identity import IDENTITY_FILE, changes
from framework.model.adapters import adapter_differences, uses_adapter
from framework.run.checkpoints import (
    CheckpointError,
    committed,
    read_progress,
    resume_point,
    step_dir,
    weights_only_loading,
)
from framework.run.files import (
    COMMIT_MARKER,
    CONFIG_FILE,
    DATASET_POINTER,
    PROGRESS_FILE,
    RNG_FILE,
    TOKENIZER_DIR,
    UNIVERSAL_DIR,
    space_report,
    write_json,
)
from framework.run.integrity import damage, manifest, set_aside_damaged


def check_resume(cfg: TrainConfig) -> Path | None:
    """On the driver, before any worker starts: checkpoint.resume's choice, checked and
    verified (framework/run/integrity.py): with checkpoint.resume=auto a damaged newest one is
    set aside (renamed damaged_step_*, with a warning) for the newest intact one; an
    explicit damaged checkpoint.resume=<path> stops the run, naming the file; so do other
    adapter settings, and other data unless allowed (_check_data_resume)."""
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
        _check_data_resume(chosen, read_progress(chosen), cfg)
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


# ------------------------------------------------------------------------------ data


def run_data_identity(output_dir: str | Path) -> dict | None:
    """The identity of the data artifact the run at `output_dir` was prepared with; None
    when it has none recorded (not prepared by this version)."""
    pointer = Path(output_dir) / DATASET_POINTER
    if not pointer.is_file():
        return None
    file = Path(json.loads(pointer.read_text())["path"]) / IDENTITY_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def _check_data_resume(path: Path, progress: dict, cfg: TrainConfig) -> None:
    """On the driver: the checkpoint at `path` (its `progress`) against the data the run
    prepared. On other data its sampler position points into another packed stream: stop,
    naming what changed, unless checkpoint.resume_on_changed_data=continue; then say where
    the run continues (a warning: the console and, under Hydra, train.log)."""
    changed = changes(progress.get("data"), run_data_identity(cfg.run.output_dir))
    if changed is None:
        return
    step, sampler = progress["step"], progress["sampler"]
    if cfg.checkpoint.resume_on_changed_data != "continue":
        raise ConfigError(
            f"{path} was trained on other data: {changed}; set "
            f"checkpoint.resume_on_changed_data=continue to continue from step {step} on the "
            "new data, or start afresh in another run.output_dir"
        )
    logging.getLogger(__name__).warning(
        f"resuming {path} on changed data ({changed}): the run continues at step {step}, "
        f"{_position(sampler)} (checkpoint.resume_on_changed_data=continue); not an exact "
        "continuation"
    )


def _position(sampler: dict) -> str:
    if "round" in sampler:  # grpo's rollouts
        return f"sampling round {sampler['round']} of the new prompts"
    return f"row {sampler['rows_done']} of epoch {sampler['epoch']} of the new data's packed stream"


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
    rank_state: dict | None = None,
) -> Path:
    """Collective: every rank writes its shards and RNG state, rank 0 the progress (the
    step, the layout it was written in, the sampler's position and the run's totals),
    config and tokenizer; then the commit marker, which records every file's size and
    CRC-32, each rank reading back the files it wrote (framework/run/integrity.py's damage checks
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
            _save_our_files(engine, cfg, step, path, sampler_state, totals, tokenizer, rank_state)
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


def _save_our_files(engine, cfg, step, path, sampler_state, totals, tokenizer, rank_state) -> None:
    """Beside DeepSpeed's: this rank's RNG state (and its sampler's `rank_state`: grpo's
    current round); on rank 0 the progress, config and tokenizer
    (framework/run/integrity.py's writer_rank knows who writes what: keep it so)."""
    torch.save({**_rng_state(), "sampler": rank_state}, _rng_file(path, dist.get_rank()))
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
        "data": run_data_identity(cfg.run.output_dir),  # what check_resume compares
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
    states from the checkpoint at `path`; returns its progress, with this rank's sampler
    state as `rank_state` (None on another number of ranks). `adapter`: the checkpoint
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
        progress["rank_state"] = None
        if progress["world_size"] == dist.get_world_size() and rng.exists():
            state = torch.load(rng)
            _set_rng_state(state)
            progress["rank_state"] = state.get("sampler")
    if loaded is None:
        raise CheckpointError(
            f"DeepSpeed found no model states in {path}; the checkpoint is incomplete: pass "
            "checkpoint.resume=<an earlier step_* directory>"
        )
    return progress
