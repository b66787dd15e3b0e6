"""What a checkpoint is on disk, read-only: `<root>/step_<N>/`, committed once its COMMIT
marker exists (rank 0 writes it last, once every rank has finished); its progress
(`progress.json`: step, layout, sampler position, counters, the data's identity); which
one a run resumes from; and loading its files through torch.load(weights_only=True).
Writing one, and the resume decision: framework/train/checkpoint.py."""

from __future__ import annotations

import contextlib
import json
import pickle
import zipfile
from collections.abc import Iterator
from pathlib import Path

import torch

from framework.config.schema import ConfigError, TrainConfig, first_line
from framework.run.files import COMMIT_MARKER, PROGRESS_FILE


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


def needs_universal(path: Path, world_size: int) -> bool:
    """A ZeRO 1-3 checkpoint written by another number of ranks loads only once converted
    to DeepSpeed's universal format (ZeRO-0 keeps whole optimizer states: no need)."""
    progress = read_progress(path)
    return progress["world_size"] != world_size and progress["zero_stage"] > 0
