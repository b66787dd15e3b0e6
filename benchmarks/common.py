"""Shared by the benchmarks (`python benchmarks/throughput.py`, `launchers.py`, ...).

The repository root on sys.path (import this module before any `framework` one), the data
both benchmarks train on, the process set-up of a benchmark run, progress lines, medians,
markdown table headers, and the results page a benchmark writes (`write_results_page`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MAX_SEQ_LEN = 1024
# The tiny random-init model (these benchmarks compare the machinery, not models) on alpaca.
DATA_OVERRIDES = [
    "model=tiny_llama",
    "data=alpaca_demo",
    f"data.max_seq_len={MAX_SEQ_LEN}",
    "logger=none",
]
# Each benchmark writes its results page here, as <script name>.md: one current page per
# question (the history is in git).
RESULTS_DIR = ROOT / "benchmarks" / "results"
# Other work on the machine when this benchmark started: wall times are noisy under it.
LOAD_AT_START = os.getloadavg()[0]


def arg_parser(doc: str, page: str, quick: str | None = None) -> argparse.ArgumentParser:
    """The script's docstring as its --help; `--out`, the results page it writes (by default
    RESULTS_DIR/<page>.md); and `--quick` described by `quick`, where the script has one."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if quick:
        parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument(
        "--out",
        type=lambda path: Path(path).absolute(),  # before bench_workdir changes directory
        default=RESULTS_DIR / f"{page}.md",
        help=f"the results page to write (default: benchmarks/results/{page}.md)",
    )
    return parser


@contextlib.contextmanager
def bench_workdir(prefix: str) -> Iterator[Path]:
    """A temporary directory for one benchmark run, in a process set up as both need:
    FutureWarnings off, no tokenizers parallelism (launched processes inherit it), the
    repository root as working directory (conf/ and data paths are relative to it)."""
    warnings.filterwarnings("ignore", category=FutureWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.chdir(ROOT)
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


def free_port() -> int:
    """A free TCP port on this host, for a process group's rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def progress(text: str) -> None:
    """One progress line on stderr: stdout holds only the table and its notes."""
    print(f"  {text}", file=sys.stderr, flush=True)


def median(rows: Iterable[dict], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def table_header(*columns: str) -> list[str]:
    """A markdown table's header and separator lines."""
    return ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]


def machine() -> str:
    """This machine in one line: CPU model, cores, bf16 units (they decide bf16 speed), memory."""
    import platform

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    from framework.model.precision import cpu_bf16_units

    units = cpu_bf16_units() or "no bf16 units"
    return f"{model}, {os.cpu_count()} cores, {units}, {memory:.0f} GB memory"


def write_results_page(out: Path, title: str, body: list[str]) -> None:
    """`body` (markdown lines) on stdout, and the page `out`: `title`, then the date, commit,
    machine, its load and the command that made it, then `body`."""
    import datetime
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") + (
        " (with changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
    )
    command = " ".join(["python", os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])
    header = [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- commit: {commit}",
        f"- machine: {machine()}",
        f"- load: 1-minute load average {LOAD_AT_START:.1f} when it started (other work), "
        f"{os.getloadavg()[0]:.1f} when it ended (its own processes included), on "
        f"{os.cpu_count()} cores: wall times are noisy when other work shares the cores",
        f"- command: `{command}`",
        "",
    ]
    print("\n".join(body))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join([*header, *body]) + "\n")
    progress(f"written: {out}")
