"""What a run directory holds, read for the report: its config, logged steps and
evaluations, scored suite answers, data summary and totals, and how far the run got. A
run that is still going, stopped early or never evaluated gives what exists."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from framework.config.saved import load_train_config
from framework.config.schema import ConfigError, TrainConfig
from framework.run.files import (
    COMMIT_MARKER,
    CONFIG_FILE,
    HF_DIR,
    LEASE_FILE,
    METRICS_FILE,
    STATS_FILE,
    STOP_FILE,
    SUITE_ANSWERS_FILE,
    SUMMARY_FILE,
)
from framework.run.lease import read_holder, takeover_reason, this_process


@dataclass
class Run:
    path: Path
    name: str
    config: TrainConfig
    state: str  # finished, running, stopped early (why), ended before its last step
    steps: list[dict]  # metrics.jsonl's training lines, in step order
    evals: list[dict]  # metrics.jsonl's evaluation lines
    answers: list[dict]  # suite_answers.jsonl
    data: dict | None  # data_stats.json
    summary: dict | None  # summary.json
    # Lines that could not be read, with where they are: shown, never dropped unsaid.
    unreadable: list[str] = field(default_factory=list)

    @property
    def last_step(self) -> int:
        return self.steps[-1]["step"] if self.steps else 0

    def final(self, key: str) -> float | None:
        """`key`'s last logged value: from the last training line, else the last evaluation."""
        for lines in (self.steps, self.evals):
            for line in reversed(lines):
                if key in line:
                    return line[key]
        return None


def read_run(path: str | Path) -> Run:
    """The run in `path`; a directory that is not a run directory is one ConfigError."""
    path = Path(path).resolve()
    if not (path / CONFIG_FILE).is_file():
        what = "does not exist" if not path.exists() else f"has no {CONFIG_FILE}"
        raise ConfigError(
            f"{path} is not a run directory: it {what}. Give the run.output_dir of a "
            "launch/train.py run (it holds config.yaml and metrics.jsonl)"
        )
    config = load_train_config(path / CONFIG_FILE)
    unreadable: list[str] = []
    lines = _json_lines(path / METRICS_FILE, unreadable)
    steps = [line for line in lines if "loss" in line]
    # A resumed run logs again the steps after its checkpoint: the newest line counts.
    steps = sorted({line["step"]: line for line in steps}.values(), key=lambda line: line["step"])
    evals = [line for line in lines if "loss" not in line]
    evals = sorted({line["step"]: line for line in evals}.values(), key=lambda line: line["step"])
    return Run(
        path=path,
        name=path.name,
        config=config,
        state=_state(path, config, steps),
        steps=steps,
        evals=evals,
        answers=_json_lines(path / SUITE_ANSWERS_FILE, unreadable),
        data=_json_file(path / STATS_FILE, unreadable),
        summary=_json_file(path / SUMMARY_FILE, unreadable),
        unreadable=unreadable,
    )


def _state(path: Path, config: TrainConfig, steps: list[dict]) -> str:
    """How far the run got. The driver writes the final report while it still holds the
    lease: a lease counts as a live run only when another process holds it."""
    last, planned = (steps[-1]["step"] if steps else 0), config.trainer.max_steps
    if (path / HF_DIR).is_dir() and last >= planned:
        return "finished"
    holder, me = read_holder(path / LEASE_FILE), this_process()
    ours = holder is not None and (holder.host, holder.pid) == (me.host, me.pid)
    if holder and not ours and takeover_reason(holder, me, config.run.lease_stale_s) is None:
        return f"running (step {last} of {planned})"
    # The workers' summary says why they stopped; the driver clears the stop request first.
    stop, summary = path / STOP_FILE, _json_file(path / SUMMARY_FILE, []) or {}
    if summary.get("stopped") or stop.is_file():
        reason = summary.get("stopped") or stop.read_text().strip()
        return f"stopped early at step {last}: {reason}"
    # Not imported from run/checkpoints.py, which loads torch (seconds) for its other work.
    saved = sorted(
        p.parent.name for p in Path(config.run.checkpoint_dir).glob(f"step_*/{COMMIT_MARKER}")
    )
    newest = f"; newest checkpoint {saved[-1]}, to resume from" if saved else ""
    return f"ended at step {last} of {planned}, before the export{newest}"


def _json_lines(file: Path, unreadable: list[str]) -> list[dict]:
    """The file's JSON lines; a line being written as it was read (the last, without its
    newline) or a damaged one is listed in `unreadable` by file and line."""
    if not file.is_file():
        return []
    rows = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except ValueError:
            unreadable.append(f"{file.name}:{number}")
    return rows


def _json_file(file: Path, unreadable: list[str]) -> dict | None:
    if not file.is_file():
        return None
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError:
        unreadable.append(file.name)
        return None
