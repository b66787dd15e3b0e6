"""Stopping early, cleanly: on SIGTERM or SIGUSR1 (what Slurm and Kubernetes send before
they kill a job), or close to a Slurm job's time limit, the run saves a checkpoint and
exits with EXIT_RESUMABLE; starting the same command again resumes from it.

The driver turns a signal into a file in the run directory (framework/run/files.py), which
every worker can see on any node; rank 0 looks for it after each step and all ranks stop
together. Having stopped, rank 0 leaves the reason in that file for the driver. No Ray in
here: the workers' StopCheck runs under any launcher.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.distributed as dist

from framework.run.files import STOP_FILE, write_stop_request

# EX_TEMPFAIL: the job did not finish but can be run again to continue.
EXIT_RESUMABLE = 75
_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def stop_on_signals(output_dir: str | Path) -> None:
    """Driver: on SIGTERM / SIGUSR1, ask the workers to checkpoint and stop (the driver
    itself keeps waiting for them)."""

    def request(signum, frame):
        name = signal.Signals(signum).name
        print(f"{name} received: checkpointing, then stopping", flush=True)
        write_stop_request(output_dir, name)

    for sig in _SIGNALS:
        signal.signal(sig, request)


def slurm_deadline() -> float | None:
    """The Unix time at which Slurm ends this job, when running in one with a limit."""
    if "SLURM_JOB_END_TIME" in os.environ:
        return float(os.environ["SLURM_JOB_END_TIME"])
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        end = subprocess.run(
            ["squeue", "--noheader", "--jobs", job, "--format", "%e"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout.strip()
        return datetime.fromisoformat(end).timestamp()
    except (OSError, subprocess.SubprocessError, ValueError):
        return None  # no limit ("UNLIMITED", "N/A") or no squeue: nothing to watch


class StopCheck:
    """Worker side: after each step, whether every rank should checkpoint and stop."""

    def __init__(self, output_dir: str | Path, deadline: float | None, margin_s: float):
        self.stop_file = Path(output_dir) / STOP_FILE
        self.deadline, self.margin_s = deadline, margin_s
        self.signalled: str | None = None
        self.longest_s = 0.0  # the longest step (+ save) seen: what stopping still costs
        if threading.current_thread() is threading.main_thread():
            # Launched without a driver of ours (torchrun): the signal reaches us directly.
            for sig in _SIGNALS:
                signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        self.signalled = signal.Signals(signum).name

    def observe(self, seconds: float) -> None:
        self.longest_s = max(self.longest_s, seconds)

    def reason(self, rank: int, device: torch.device) -> str | None:
        """Collective: why to stop now (the same answer on every rank), or None."""
        code = torch.zeros(1, device=device)
        if rank == 0:
            code[0] = self._local_reason_code()
        dist.all_reduce(code)
        return _REASONS[int(code.item())]

    def _local_reason_code(self) -> int:
        if self.signalled or self.stop_file.exists():
            return 1
        margin = max(self.margin_s, 2 * self.longest_s)
        if self.deadline is not None and time.time() + margin >= self.deadline:
            return 2
        return 0


_REASONS = {0: None, 1: "stop requested (signal)", 2: "the Slurm job's time limit is near"}
