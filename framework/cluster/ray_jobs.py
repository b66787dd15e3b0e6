"""Ray Jobs: submit a training run to a running Ray cluster through its dashboard (Ray's
Job Submission API), follow its logs, list and stop jobs.

A job runs `launch/train.py` with the cluster's own Python environment, in a copy of this
repository that Ray unpacks into a temporary directory (the runtime_env working_dir). So:

- `run.output_dir` must be an absolute path that every node reads and writes (shared
  storage): the copy, and anything written relative to it, goes away with the job.
- Secrets are not forwarded: Ray shows a job's runtime_env, environment variables
  included, on its dashboard. The cluster's nodes must have `WANDB_API_KEY` and `HF_TOKEN`
  in their own environment (where `ray start` ran) for online logging or gated models.
- A cluster with token authentication (Ray's default where `ray start` finds a token in
  ~/.ray/auth_token): set RAY_AUTH_MODE=token, and RAY_AUTH_TOKEN or that file, where the
  submitting command runs.
- `stop` sends the driver SIGTERM, like a preemption: the workers checkpoint after the
  current step and the job ends STOPPED. Submitting the same overrides again resumes.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import socket
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from ray.exceptions import AuthenticationError
from ray.job_submission import JobDetails, JobStatus, JobSubmissionClient, JobType

from framework.config.schema import ConfigError

# A job that `stop` ended: what a shell reports for a process ended by SIGTERM (what Ray
# sends the driver). Distinct from 75 (framework.train.stopping.EXIT_RESUMABLE), which the
# driver's own exit code passes through, so a wrapper that reruns on 75 leaves a job
# someone stopped alone.
EXIT_STOPPED = 143
_EXIT_CODES = {JobStatus.SUCCEEDED: 0, JobStatus.STOPPED: EXIT_STOPPED}

# How long Ray lets the driver of a stopped job checkpoint before it kills it (Ray's
# default, 3 s, is shorter than one step).
STOP_GRACE_S = 300

REPO_ROOT = Path(__file__).resolve().parents[2]
# Not uploaded with the working_dir: environments, run outputs, logs and caches. No
# trailing slashes: those would match only the files inside, and Ray would still walk them.
_EXCLUDES = [
    "/.venv",
    "/.git",
    "/outputs",
    "wandb",
    "/slurm/logs",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    "*.egg-info",
]
_TRAIN_SCRIPT = "launch/train.py"


def check_output_dir(overrides: list[str]) -> None:
    """Raise ConfigError unless the overrides set run.output_dir to an absolute path."""
    values = [
        value.strip("'\"")
        for key, _, value in (o.partition("=") for o in overrides)
        if key.lstrip("+") == "run.output_dir"
    ]
    if not values or not os.path.isabs(values[-1]):
        got = f"run.output_dir={values[-1]}" if values else "no run.output_dir"
        raise ConfigError(
            f"got {got}; a submitted run needs run.output_dir=<absolute path on storage "
            "every node reads>: the job runs in a temporary copy of the repository, and a "
            "relative or default run.output_dir would go away with that copy"
        )


def entrypoint(python: str, overrides: list[str]) -> str:
    return shlex.join([python, _TRAIN_SCRIPT, *overrides])


def overrides_of(job: JobDetails) -> str:
    """The Hydra overrides of a job's training command (the whole command otherwise)."""
    _, found, overrides = job.entrypoint.partition(f" {_TRAIN_SCRIPT}")
    return overrides.strip() if found else job.entrypoint


def connect(address: str) -> JobSubmissionClient:
    """A client for the cluster's dashboard at `address`; ConnectionError if it cannot
    reach it or is refused. Ray would let RAY_ADDRESS or RAY_API_SERVER_ADDRESS override
    the address it is given; here the address wins (the callers default it to those)."""
    for name in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS"):
        os.environ.pop(name, None)
    try:
        return JobSubmissionClient(address)
    except AuthenticationError as err:
        raise ConnectionError(str(err)) from None


def submit(address: str, overrides: list[str], python: str) -> tuple[JobSubmissionClient, str]:
    """Check the overrides, then submit `launch/train.py` with them; returns the client and
    the job's submission id."""
    check_output_dir(overrides)
    client = connect(address)
    job_id = client.submit_job(
        entrypoint=entrypoint(python, overrides),
        runtime_env={
            "working_dir": str(REPO_ROOT),
            "excludes": _EXCLUDES,
            "env_vars": {"RAY_JOB_STOP_WAIT_TIME_S": str(STOP_GRACE_S)},
        },
    )
    return client, job_id


class HeadLost(ConnectionError):
    """The cluster's head stopped answering while a job was followed: its host is lost,
    and the job's driver with it (Ray Jobs run their drivers on the head)."""


# How often `follow` checks that the head still takes connections, and how long one check
# waits: a host that went away without a word (powered off, cut off) closes no
# connection, and the log stream would wait on it forever.
HEAD_CHECK_EVERY_S = 15.0
HEAD_CHECK_TIMEOUT_S = 10.0


def head_answers(address: str) -> bool:
    """Whether the dashboard at `address` (http://HOST:PORT) takes a connection."""
    url = urlsplit(address if "://" in address else f"http://{address}")
    try:
        socket.create_connection((url.hostname, url.port or 80), HEAD_CHECK_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def follow(
    client: JobSubmissionClient, job_id: str, address: str, write: Callable[[str], None]
) -> JobDetails:
    """Hand the job's logs to `write` as they come, until it ends; returns the ended job.
    Raises HeadLost when the head at `address` stops answering first."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            write(chunk)

    async def watch() -> None:
        while True:
            await asyncio.sleep(HEAD_CHECK_EVERY_S)
            if not await asyncio.to_thread(head_answers, address):
                raise HeadLost(address)

    async def tail_while_the_head_answers() -> None:
        tasks = {asyncio.create_task(tail()), asyncio.create_task(watch())}
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in done:
            task.result()  # the error that ended it, if any

    try:
        asyncio.run(tail_while_the_head_answers())
        return client.get_job_info(job_id)
    except (RuntimeError, OSError, aiohttp.ClientError) as err:
        # A connection the head's end closed or reset; requests' errors are OSErrors.
        if isinstance(err, HeadLost) or not _head_stays(address):
            raise HeadLost(address) from None
        raise


def _head_stays(address: str, checks: int = 5, apart_s: float = 2.0) -> bool:
    """Whether the head answers `checks` checks `apart_s` apart: a head being killed can
    still take a connection for a moment after its log stream broke."""
    for check in range(checks):
        if not head_answers(address):
            return False
        if check < checks - 1:
            time.sleep(apart_s)
    return True


def exit_code(job: JobDetails) -> int:
    """The driver's exit code where Ray has it (so 75, stopped and resumable, passes
    through); else 0 for SUCCEEDED, EXIT_STOPPED for STOPPED and 1 for FAILED."""
    if job.driver_exit_code is not None:
        return job.driver_exit_code
    return _EXIT_CODES.get(job.status, 1)


def stop(client: JobSubmissionClient, job_id: str) -> bool:
    """Ask the job to stop (its driver checkpoints first); False if it had already ended."""
    return client.stop_job(job_id)


def submissions(client: JobSubmissionClient) -> list[JobDetails]:
    """Jobs submitted through the API, oldest first (drivers started by hand are not
    jobs one can stop or follow here)."""
    jobs = [job for job in client.list_jobs() if job.type == JobType.SUBMISSION]
    return sorted(jobs, key=lambda job: job.start_time or 0)
