"""Run tracking on rank 0: metrics.jsonl, wandb, a progress bar and report.html at each
checkpoint. Other ranks get a no-op."""

from __future__ import annotations

import dataclasses
import json
import netrc
import os
import time
import uuid
from pathlib import Path

from tqdm import tqdm

from framework.config.schema import LoggerConfig, TrainConfig
from framework.run.files import (
    INSPECT_FILE,
    METRICS_FILE,
    SAMPLES_FILE,
    STATS_FILE,
    SUITE_ANSWERS_FILE,
    SUMMARY_FILE,
    WANDB_ID_FILE,
    write_atomically,
    write_json,
)

# A step's metrics count its skipped update, and why (framework/train/step.py).
SKIP_COUNTS = ("skipped", "skipped_non_finite_loss", "skipped_non_finite_grad_norm")


def wandb_mode(cfg: LoggerConfig) -> str:
    """`auto` is online only when an API key is configured, so offline machines never hang."""
    if cfg.mode != "auto":
        return cfg.mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        has_login = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        has_login = False
    return "online" if has_login else "offline"


def _keep_lines_up_to(path: Path, step: int) -> None:
    """Drop the JSON lines of `path` logged after `step` (all of them for step 0: a fresh
    start logs its own step-0 evaluation)."""
    if not path.exists():
        return
    kept = [
        line for line in path.read_text().splitlines() if step and json.loads(line)["step"] <= step
    ]
    write_atomically(path, "".join(line + "\n" for line in kept))


def _metrics_lines(path: Path) -> list[dict]:
    """The metrics of each line of metrics.jsonl, without its step and time."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in ("step", "time")} for line in lines]


def _wandb_run_id(out: Path, *, fresh: bool) -> str:
    """The wandb run id of this run directory: new for a fresh start, kept for resumes."""
    file = out / WANDB_ID_FILE
    if fresh or not file.exists():
        file.write_text(uuid.uuid4().hex[:8])
    return file.read_text().strip()


ANSWER_COLUMNS = [
    "group",
    "held_out",
    "prompt",
    "reference",
    "prediction",
    "exact",
    "normalized",
    "rouge_l",
]


def _table(rows: list[dict], columns: list[str]):
    import wandb

    def cell(value):  # a list (IFEval's per-instruction verdicts) as one readable cell
        return json.dumps(value) if isinstance(value, list | dict) else value

    return wandb.Table(columns=columns, data=[[cell(row[c]) for c in columns] for row in rows])


def _init_wandb(**kwargs):
    """wandb.init, retried when the run id is still held by a wandb service: after Ray
    restarts the workers, the killed rank 0's service can hold the id for a while. A retry
    starts a service of this process's own."""
    import wandb

    for attempt in range(1, _WANDB_INIT_TRIES):
        try:
            return wandb.init(**kwargs)
        except Exception as err:
            if "is in use" not in str(err):
                raise
            print(f"wandb: {err}; retrying with a service of this process's own", flush=True)
            wandb.teardown()
            os.environ.pop("WANDB_SERVICE", None)
            time.sleep(2.0 * attempt)
    return wandb.init(**kwargs)


_WANDB_INIT_TRIES = 5


class Tracker:
    def __init__(
        self,
        cfg: TrainConfig,
        *,
        enabled: bool,
        start_step: int = 0,
        totals: dict[str, float] | None = None,
    ):
        """`start_step` and `totals`: where a resumed run stands (its checkpoint's)."""
        self.enabled = enabled
        self.run = None
        self.totals: dict[str, float] = dict(totals or {})
        if not enabled:
            return
        out = self.out = Path(cfg.run.output_dir)
        self.steps = start_step
        self.last: dict[str, float] = {}
        self.last_eval: dict[str, float] = {}
        self.stopped: str | None = None  # why the loop stopped early, set by it
        # What was logged after the checkpoint did not happen, as far as the run goes on.
        for name in (SAMPLES_FILE, SUITE_ANSWERS_FILE, METRICS_FILE):
            _keep_lines_up_to(out / name, start_step)
        # Resumed: the summary starts from the last step and evaluation kept, so a resume
        # with no step left to take (only the export) does not write a NaN final loss.
        for line in _metrics_lines(out / METRICS_FILE):
            if "step_time_s" in line:
                self.last = line
            else:
                self.last_eval = line
        self.metrics_file = (out / METRICS_FILE).open("a", encoding="utf-8")
        self.reports = None
        if cfg.run.report:
            from framework.report.page import CheckpointReports  # late: matplotlib, a second

            self.reports = CheckpointReports(out)
        self.progress = tqdm(total=cfg.trainer.max_steps, initial=start_step, mininterval=2.0)
        if cfg.logger.backend == "wandb":
            import wandb

            self.run = _init_wandb(
                project=cfg.logger.project,
                entity=cfg.logger.entity,
                name=cfg.run.name,
                dir=str(out),
                # A resumed run continues the same wandb run.
                id=_wandb_run_id(out, fresh=start_step == 0),
                resume="allow",
                config=dataclasses.asdict(cfg),
                mode=wandb_mode(cfg.logger),
                # Ray already captures worker output; a second capture garbles both.
                settings=wandb.Settings(console="off"),
            )
            if start_step == 0:
                self._log_data(out)

    def _log_data(self, out: Path) -> None:
        """The data summary and the inspected examples that prepare_run wrote."""
        import wandb

        stats_file, inspect_file = out / STATS_FILE, out / INSPECT_FILE
        if stats_file.exists():
            self.run.summary["data"] = json.loads(stats_file.read_text())
        if inspect_file.exists():
            rows = json.loads(inspect_file.read_text())
            columns = ["where", "tokens", "trained_per_role", "warnings", "text"]
            table = wandb.Table(columns=columns, data=[[str(r[c]) for c in columns] for r in rows])
            self.run.log({"data/examples": table}, step=0)

    def step(self, metrics: dict[str, float]) -> None:
        """Advance the progress bar and the run's totals by one finished step."""
        if not self.enabled:
            return
        counted = {**metrics, "trained_tokens": 0} if metrics["skipped"] else metrics
        for key in ("tokens", "trained_tokens", "step_time_s", *SKIP_COUNTS):
            # A skipped step's tokens were read, not trained on.
            self.totals[key] = self.totals.get(key, 0.0) + counted.get(key, 0)
        self.totals["peak_memory_gb"] = max(
            self.totals.get("peak_memory_gb", 0.0), metrics["peak_memory_gb"]
        )
        self.last = metrics
        self.steps += 1
        self.progress.set_postfix(
            loss=f"{metrics['loss']:.4f}", tok_s=f"{metrics['tokens_per_s']:,.0f}", refresh=False
        )
        self.progress.update(1)

    def _write(self, step: int, metrics: dict[str, float]) -> None:
        # Wall-clock time on each line lines a run up with cluster logs and restarts.
        line = {"step": step, "time": round(time.time(), 3), **metrics}
        self.metrics_file.write(json.dumps(line) + "\n")
        self.metrics_file.flush()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self._write(step, metrics)
        if self.run is not None:
            self.run.log(metrics, step=step)

    def log_eval(
        self, step: int, metrics: dict[str, float], samples: list[dict], answers: list[dict]
    ) -> None:
        """Eval metrics to metrics.jsonl and wandb; greedy samples to samples.jsonl, scored
        suite answers (worst family first) to suite_answers.jsonl, and both as tables."""
        if not self.enabled:
            return
        self._write(step, metrics)
        for name, rows in ((SAMPLES_FILE, samples), (SUITE_ANSWERS_FILE, answers)):
            with (self.out / name).open("a", encoding="utf-8") as f:
                f.writelines(json.dumps({"step": step, **row}) + "\n" for row in rows)
        self.last_eval = metrics
        if self.run is not None:
            tables = {
                "eval/samples": (samples, ["prompt", "reference", "generated"]),
                "eval/suite_answers": (answers, ANSWER_COLUMNS),
            }
            for key, (rows, columns) in tables.items():
                if rows:
                    metrics = {**metrics, key: _table(rows, columns)}
            self.run.log(metrics, step=step)

    def stop(self, step: int, metrics: dict[str, float], reason: str, *, logged: bool) -> None:
        """The loop stops early at `step` (checkpointed): its line is written if it was not,
        and the summary will say why."""
        if not logged:
            self.log(step, metrics)
        self.stopped = reason

    def checkpointed(self) -> None:
        """A checkpoint was saved: report.html is redrawn, in the background (run.report)."""
        if self.enabled and self.reports is not None:
            self.reports.refresh()

    def summary(self) -> dict[str, float]:
        """The whole run: totals, mean throughput over training time, last loss."""
        seconds = self.totals.get("step_time_s", 0.0)
        return {
            "steps": self.steps,
            "final_loss": self.last.get("loss", float("nan")),
            "tokens": self.totals.get("tokens", 0.0),
            "trained_tokens": self.totals.get("trained_tokens", 0.0),
            "training_time_s": seconds,
            "tokens_per_s": self.totals.get("tokens", 0.0) / max(seconds, 1e-9),
            "peak_memory_gb": self.totals.get("peak_memory_gb", 0.0),
            "skipped_steps": self.totals.get("skipped", 0.0),
            # Why: a NaN or infinite loss, or gradient norm (the engine skipped the update).
            **{
                f"skipped_steps_{key.removeprefix('skipped_')}": self.totals.get(key, 0.0)
                for key in SKIP_COUNTS[1:]
            },
            # Every family's curve is in metrics.jsonl; the summary keeps the aggregates.
            **{k: v for k, v in self.last_eval.items() if not k.startswith("suite/family/")},
        }

    def close(self, *, failed: bool = False) -> None:
        """Write summary.json and finish the wandb run (marked failed when `failed`)."""
        if not self.enabled:
            return
        if self.reports is not None:  # the driver writes the final report: one writer at a time
            self.reports.wait()
        # A run that stopped early or failed says so: its newest checkpoint is its result.
        ended = {"stopped": self.stopped} if self.stopped else {"failed": True} if failed else {}
        summary = {**self.summary(), **ended}
        write_json(self.out / SUMMARY_FILE, summary)
        shown = (
            f"{k}={v:,.4g}" if isinstance(v, float | int) else f"{k}={v}"
            for k, v in summary.items()
        )
        print("run summary: " + ", ".join(shown), flush=True)
        if self.run is not None:
            self.run.summary.update(summary)
        self.progress.close()
        self.metrics_file.close()
        if self.run is not None:
            self.run.finish(exit_code=1 if failed else 0)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        # However the loop ends, an exception included: the summary of the steps taken is
        # written and the wandb run is finished, not left running.
        self.close(failed=kind is not None)


def log_evaluation(
    logger: LoggerConfig,
    name: str,
    out: Path,
    config: dict,
    metrics: dict[str, float],
    tables: dict[str, list[dict]],
) -> None:
    """A standalone evaluation (launch/eval.py) as a wandb run of its own: its metrics as
    the run's summary, and each table (every answer or reply, worst first) as a wandb table."""
    import wandb

    run = _init_wandb(
        project=logger.project,
        entity=logger.entity,
        name=name,
        job_type="eval",
        dir=str(out),
        config=config,
        mode=wandb_mode(logger),
        settings=wandb.Settings(console="off"),
    )
    logged = {f"eval/{key}": _table(rows, list(rows[0])) for key, rows in tables.items() if rows}
    if logged:
        run.log(logged)
    run.summary.update(metrics)
    run.finish()


def log_rounds(logger: LoggerConfig, out: Path, config: dict, rows: list[dict]) -> None:
    """Improvement rounds (launch/improve.py) as a wandb run of their own: each round's
    accuracies per group of families and its pair count, with the round as the step."""
    if logger.backend != "wandb":
        return
    import wandb

    run = _init_wandb(
        project=logger.project,
        entity=logger.entity,
        name=f"improve-{out.name}",
        job_type="improve",
        dir=str(out),
        config=config,
        mode=wandb_mode(logger),
        settings=wandb.Settings(console="off"),
    )
    for row in rows:
        metrics = {f"improve/{group}": value for group, value in row["accuracy"].items()}
        run.log({**metrics, "improve/pairs": row.get("pairs", 0)}, step=row["round"])
    run.finish()
