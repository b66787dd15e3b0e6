"""The report page: its sections in reading order, the style, and writing it whole."""

from __future__ import annotations

import threading
import time
from html import escape
from pathlib import Path

from framework.report import sections
from framework.report.runs import Run, read_run
from framework.run.files import REPORT_FILE, write_atomically

SECTIONS = (
    sections.overview,
    sections.training,
    sections.suite,
    sections.data,
    sections.performance,
    sections.preference,
    sections.online_rl,
)
STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222 }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 13px }
th, td { border: 1px solid #ccc; padding: 3px 7px; text-align: left; vertical-align: top }
th { background: #f2f2f2 }
pre { margin: 0; white-space: pre-wrap; max-width: 40em }
.plots { display: flex; flex-wrap: wrap; gap: 8px }
figure { margin: 0 } figure svg { max-width: 100%; height: auto }
.warn { color: #a40 }
"""


def labels(runs: list[Run]) -> list[str]:
    """Each run's name in the plots: its directory's, with its parent's where two share it."""
    names = [run.name for run in runs]
    return [
        f"{run.path.parent.name}/{run.name}" if names.count(run.name) > 1 else run.name
        for run in runs
    ]


def render(runs: list[Run]) -> str:
    named = labels(runs)
    body = "".join(section(runs, named) for section in SECTIONS)
    title = "Run report: " + ", ".join(named)
    made = time.strftime("%Y-%m-%d %H:%M:%S")
    paths = "".join(f"<li>{escape(str(run.path))}: {escape(run.state)}</li>" for run in runs)
    return (
        f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{escape(title)}</h1>"
        f"<p>Made {made} from:</p><ul>{paths}</ul>{body}</body></html>"
    )


def write_report(run_dirs: list[str | Path], out: str | Path | None = None) -> Path:
    """The report of `run_dirs` at `out` (default: report.html in the only run directory);
    a directory that is not a run directory is one ConfigError, before anything is written."""
    runs = [read_run(path) for path in run_dirs]
    file = Path(out) if out is not None else runs[0].path / REPORT_FILE
    write_atomically(file, render(runs))
    return file


def run_report(output_dir: str | Path) -> str:
    """Write the run's report.html; a line saying where, or why not. A report that fails
    never fails the run it reports on."""
    try:
        return f"report: {write_report([output_dir])}"
    except Exception as err:  # any: the run's own results matter more than its report
        return f"warning: report.html not written ({type(err).__name__}: {err})"


class CheckpointReports:
    """report.html redrawn after each checkpoint, in a thread of rank 0's: the next steps
    do not wait for the drawing (about 3 s on a CPU core). A checkpoint that comes while
    the last one's report is still drawing has none of its own; the next one catches up."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = output_dir
        self.thread: threading.Thread | None = None

    def refresh(self) -> None:
        if self.thread is not None and self.thread.is_alive():
            return
        self.thread = threading.Thread(target=self._draw, name="report", daemon=True)
        self.thread.start()

    def wait(self) -> None:
        if self.thread is not None:
            self.thread.join()

    def _draw(self) -> None:
        line = run_report(self.output_dir)
        if line.startswith("warning"):
            print(line, flush=True)
