"""A launch/serve.py server in a subprocess on 127.0.0.1, for the tests and the benchmark:
started, waited for (bounded), stopped with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import IO

import httpx

from tests.helpers import ROOT, free_port


@contextlib.contextmanager
def served(*overrides: str, ready_within: float = 300) -> Iterator[str]:
    """The base URL (http://127.0.0.1:<port>) of launch/serve.py run with `overrides`,
    once /health answers; stopped (SIGTERM, then SIGKILL) on leaving."""
    port = free_port()
    # Its output to a file: a pipe nobody reads would fill and stop the server.
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(
            [sys.executable, "launch/serve.py", f"port={port}", *overrides],
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "SERVE_API_KEY"},
            start_new_session=True,  # a group of its own, its model's process with it
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_answering(process, output, f"{url}/health", ready_within)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
            with contextlib.suppress(ProcessLookupError):  # whatever it left behind
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def wait_until_answering(process: subprocess.Popen, output: IO, url: str, within: float) -> None:
    """Return once GET `url` answers 200; raise with the server's output if `process` exits
    first, or after `within` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output.seek(0)
            raise RuntimeError(f"the server exited ({process.returncode}):\n{output.read()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=5).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {within:.0f} s")
