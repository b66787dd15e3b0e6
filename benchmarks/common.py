"""Shared by `python benchmarks/throughput.py` and `python benchmarks/launchers.py`.

The repository root on sys.path (import this module before any `framework` one), the data
both benchmarks train on, the process set-up of a benchmark run, progress lines, medians
and markdown table headers.
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


def arg_parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """The script's docstring as its --help, and `--quick` described by `quick`."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=quick)
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
