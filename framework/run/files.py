"""The run directory: the name of every file and folder a run writes under
`run.output_dir` (and inside each checkpoint), and the one way to write a file whole.

    <run.output_dir>/
      RUN_LEASE              the live run that holds this directory (run/lease.py)
      config.yaml            the resolved config (commands/prepare.py)
      tokenizer/             the tokenizer the workers load (commands/prepare.py)
      dataset.json           the path of the preprocessed data artifact (commands/prepare.py)
      data_stats.json        what the data became (commands/prepare.py)
      data_inspect.json      rendered examples, with data.inspect (commands/prepare.py)
      metrics.jsonl          one line per logged step and evaluation (tracking/tracker.py)
      samples.jsonl          greedy replies at each evaluation (tracking/tracker.py)
      suite_answers.jsonl    scored suite answers at each evaluation (tracking/tracker.py)
      summary.json           the run's totals (tracking/tracker.py)
      report.html            the run's report, at each checkpoint and at the end (report/)
      wandb_run_id, wandb/   the wandb run this directory continues (tracking/tracker.py)
      STOP_REQUESTED         the driver asks the workers to stop (train/stopping.py)
      checkpoints/step_N/    run.checkpoint_dir's default (train/checkpoint.py, names below)
      hf/                    the final model (hf/engine_export.py); with an adapter, merged into it
      hf_adapter/            with an adapter: the adapter alone, for peft (hf/adapter_export.py)
      ray/                   Ray Train's own storage (cluster/ray_train.py)
      train.log              the driver's log; the tracebacks of workers' errors
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

from framework.config.schema import ConfigError

LEASE_FILE = "RUN_LEASE"
CONFIG_FILE = "config.yaml"
TOKENIZER_DIR = "tokenizer"
DATASET_POINTER = "dataset.json"
STATS_FILE = "data_stats.json"
INSPECT_FILE = "data_inspect.json"
# eval.ifeval_prompts from the hub: the prompts the driver fetched for the workers.
IFEVAL_PROMPTS_FILE = "ifeval_prompts.jsonl"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
SUITE_ANSWERS_FILE = "suite_answers.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.html"
WANDB_ID_FILE = "wandb_run_id"
STOP_FILE = "STOP_REQUESTED"
HF_DIR = "hf"
# An adapter run's adapter export sits beside its merged one: <export>_adapter.
ADAPTER_SUFFIX = "_adapter"
RAY_DIR = "ray"
# The driver's log (Hydra's job log); workers add the tracebacks of the errors the console
# shows as one line.
TRAIN_LOG = "train.log"

# Inside a checkpoint (checkpoints/step_<N>/), next to DeepSpeed's own files; it also
# holds CONFIG_FILE and TOKENIZER_DIR.
COMMIT_MARKER = "COMMITTED"
PROGRESS_FILE = "progress.json"
# Each rank's RNG state: RNG_FILE.format(rank=rank).
RNG_FILE = "rng_rank{rank:05d}.pt"
UNIVERSAL_DIR = "universal"

# What launch/eval.py writes in its output directory.
EVAL_FILE = "eval.json"

# launch/serve.py's conversation log (log_dir): its exchanges, and their ratings.
CONVERSATIONS_FILE = "conversations.jsonl"
FEEDBACK_FILE = "feedback.jsonl"


def write_atomically(file: str | Path, text: str) -> None:
    """Write `text` to `file` whole or not at all: a reader (or a restart after a crash)
    sees the old content or the new one, never a part."""
    file = Path(file)
    staging = file.with_name(f".{file.name}.tmp")
    with staging.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(staging, file)


def space_report(directory: str | Path, needed: int) -> str:
    """How much space `directory`'s file system has against `needed` bytes, in words."""
    directory = Path(directory)
    while not directory.exists():
        directory = directory.parent
    free = shutil.disk_usage(directory).free
    # Said in words: torch's writer reports a full disk only as "unexpected pos ...".
    verdict = "Not enough space: it" if free < needed else "It"
    return f"{verdict} needs about {_size(needed)}; {directory} has {_size(free)} free"


def _size(count: int) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e9 else f"{count / 1e6:.1f} MB"


def write_json(file: str | Path, value) -> None:
    """`value` as indented JSON, written atomically."""
    write_atomically(file, json.dumps(value, indent=2, ensure_ascii=False))


def artifact_path(output_dir: str | Path) -> Path:
    """Where `prepare_run` recorded the data artifact for this run. A worker on a node that
    cannot see the driver's paths fails here, with the fix, rather than deep in a loader."""
    pointer = Path(output_dir) / DATASET_POINTER
    if not pointer.is_file():
        raise ConfigError(_not_shared("run.output_dir", pointer))
    artifact = Path(json.loads(pointer.read_text())["path"])
    if not artifact.is_dir():
        raise ConfigError(_not_shared("run.cache_dir", artifact))
    return artifact


def _not_shared(key: str, path: Path) -> str:
    return (
        f"{path} does not exist on node {socket.gethostname()}: the driver prepared it, but "
        f"this worker cannot see it; on a multi-node cluster set {key} to storage every node "
        "reads (a shared file system)"
    )


def write_stop_request(output_dir: str | Path, reason: str) -> None:
    """Ask every worker (on any node that shares the run directory) to stop; rank 0 also
    leaves the reason it stopped here for the driver."""
    write_atomically(Path(output_dir, STOP_FILE), reason + "\n")


def stopped_early(output_dir: str | Path) -> str | None:
    """Why the run's workers stopped before the last step, as rank 0's summary.json says;
    None when they finished (or wrote no summary)."""
    try:
        return json.loads(Path(output_dir, SUMMARY_FILE).read_text()).get("stopped")
    except (OSError, ValueError):
        return None


def clear_stop_request(output_dir: str | Path) -> str | None:
    """Remove the stop request; returns the reason it held, if there was one."""
    file = Path(output_dir, STOP_FILE)
    reason = file.read_text().strip() if file.exists() else None
    file.unlink(missing_ok=True)
    return reason
