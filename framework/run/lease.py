"""One run per run directory: `launch/train.py` holds a lease on `run.output_dir` (the
file RUN_LEASE, framework/run/files.py) for as long as it runs, so a double submit, a manual
rerun beside a requeued job, or two users sharing a name cannot write the same
checkpoints, metrics and export at once.

Shared file systems (NFS, Lustre) do not reliably honour `flock`, so the lease is a file
created atomically (a hard link of a finished file: `link` fails if the name exists, on
every POSIX file system) and kept alive by a heartbeat the holder rewrites every
`run.lease_stale_s / 4` seconds. A lease is taken over, with a message, when its holder is
gone: its heartbeat is older than `run.lease_stale_s`, its process has died on this host,
or this is a Slurm requeue of the job that holds it. Commands that only read a run
(prepare, export, eval) take no lease.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from framework.config.schema import ConfigError
from framework.run.files import LEASE_FILE, write_atomically

# Every change to an existing lease (a takeover, a heartbeat, a release) holds this lock
# beside it (RUN_LEASE.takeover).
_TAKEOVER_SUFFIX = ".takeover"
# How long a start waits out other starts taking the lease in turn before it gives up.
_CONTENDED_S = 10

# Ray's job supervisor passes the driver of a submitted job its config, submission id
# included, in this variable.
_RAY_JOB_CONFIG = "RAY_JOB_CONFIG_JSON_ENV_VAR"


def _create(file: Path, holder: Holder) -> bool:
    """Atomically create `file` holding `holder`, whole; False if it exists. A hard link
    of a finished file: readers never see it half-written, and `link` fails on an existing
    name on every POSIX file system, NFS and Lustre included."""
    staging = file.with_name(f".{file.name}.{holder.token}")
    write_atomically(staging, json.dumps(asdict(holder)))
    try:
        os.link(staging, file)
        return True
    except FileExistsError:
        return False
    finally:
        staging.unlink(missing_ok=True)


class LeaseHeld(ConfigError):
    """The run directory is leased by a live run; the message names it and the way out."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and when it last said it was alive."""

    host: str
    pid: int
    started: float
    heartbeat: float
    token: str  # tells two holders on one host and pid apart (a reused pid)
    slurm_job: str | None = None
    slurm_restart: int = 0
    ray_job: str | None = None

    def describe(self) -> str:
        jobs = [f"Slurm job {self.slurm_job}"] if self.slurm_job else []
        jobs += [f"Ray job {self.ray_job}"] if self.ray_job else []
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return ", ".join([f"pid {self.pid} on {self.host}", *jobs, f"started {started}"])


def this_process() -> Holder:
    now = time.time()
    return Holder(
        host=socket.gethostname(),
        pid=os.getpid(),
        started=now,
        heartbeat=now,
        token=uuid.uuid4().hex,
        slurm_job=os.environ.get("SLURM_JOB_ID"),
        slurm_restart=int(os.environ.get("SLURM_RESTART_COUNT", "0")),
        ray_job=_ray_job_id(),
    )


def _ray_job_id() -> str | None:
    try:
        return json.loads(os.environ[_RAY_JOB_CONFIG])["metadata"]["job_submission_id"]
    except (KeyError, TypeError, ValueError):
        return None


def read_holder(file: Path) -> Holder | None:
    """The lease's holder, or None when there is no lease file."""
    try:
        return Holder(**json.loads(file.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, TypeError, ValueError):
        pass
    try:  # not ours, or from another version: judged by its age alone
        mtime = file.stat().st_mtime
    except FileNotFoundError:
        return None
    return Holder(host="?", pid=-1, started=mtime, heartbeat=mtime, token="?")


def takeover_reason(held: Holder, me: Holder, stale_after_s: float) -> str | None:
    """Why `me` may take `held`'s lease (its holder is gone), or None if it may not."""
    if held.slurm_job and held.slurm_job == me.slurm_job and held.slurm_restart < me.slurm_restart:
        return f"Slurm requeued job {held.slurm_job}: taking over its own lease"
    if held.host == me.host and held.pid > 0 and not _alive(held.pid):
        return f"its process {held.pid} on {held.host} is gone"
    age = me.heartbeat - held.heartbeat
    if age > stale_after_s:
        return f"its last heartbeat is {age:.0f} s old (run.lease_stale_s={stale_after_s:g})"
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class RunLease:
    """The lease on one run directory, held from `acquire` to `release` (or the end of a
    `with` block), renewed by a daemon thread.

        with RunLease(cfg.run.output_dir, cfg.run.lease_stale_s).acquire():
            ...
    """

    def __init__(self, output_dir: str | Path, stale_after_s: float):
        self.file = Path(output_dir) / LEASE_FILE
        self.stale_after_s = stale_after_s
        self.me = this_process()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RunLease:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> RunLease:
        """Take the lease, or raise LeaseHeld naming its live holder."""
        self.file.parent.mkdir(parents=True, exist_ok=True)
        give_up = time.monotonic() + _CONTENDED_S
        while time.monotonic() < give_up:
            if _create(self.file, self._now()):
                self._thread = threading.Thread(target=self._renew, daemon=True)
                self._thread.start()
                return self
            held = read_holder(self.file)
            if held is None:
                continue  # released between our attempt and the read
            reason = takeover_reason(held, self._now(), self.stale_after_s)
            if reason is None:
                raise LeaseHeld(self._held_message(held))
            if self._remove_if_unchanged(held):
                print(
                    f"taking over the lease on {self.file.parent} from {held.describe()}: {reason}"
                )
            else:
                time.sleep(0.05)  # another run is taking it over: see who holds it then
        raise LeaseHeld(
            f"{self.file} kept changing hands for {_CONTENDED_S} s: several runs are starting "
            f"on run.output_dir={self.file.parent} at once; start one of them"
        )

    def release(self) -> None:
        """Stop renewing and remove the lease, if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        give_up = time.monotonic() + _CONTENDED_S
        while not self._take_lock():
            if time.monotonic() > give_up:
                return  # a taker holds the lease's lock: the lease is its to remove
            time.sleep(0.05)
        try:
            held = read_holder(self.file)
            if held is not None and held.token == self.me.token:
                self.file.unlink(missing_ok=True)
        finally:
            self._lock.unlink(missing_ok=True)

    def _now(self) -> Holder:
        return Holder(**{**asdict(self.me), "heartbeat": time.time()})

    def _remove_if_unchanged(self, held: Holder) -> bool:
        """Remove the lease file if it still holds `held`; False if another run is taking
        it over (it holds the takeover lock) or did. Takers go one at a time, under a
        lock file created like the lease, so that none removes a lease another has just
        taken over."""
        if not self._take_lock():
            return False
        try:
            if read_holder(self.file) != held:
                return False
            self.file.unlink(missing_ok=True)
            return True
        finally:
            self._lock.unlink(missing_ok=True)

    @property
    def _lock(self) -> Path:
        return self.file.with_name(LEASE_FILE + _TAKEOVER_SUFFIX)

    def _take_lock(self) -> bool:
        """Take the lock that every change to an existing lease file holds (a takeover's
        removal, the holder's heartbeat and release), so that none of them acts on a
        lease another has just replaced; False if someone else holds it."""
        if _create(self._lock, self._now()):
            return True
        taker = read_holder(self._lock)
        if taker is not None and time.time() - taker.heartbeat > self.stale_after_s:
            self._lock.unlink(missing_ok=True)  # a taker that died mid-takeover
        return False

    def _renew(self) -> None:
        while not self._stop.wait(self.stale_after_s / 4):
            if not self._take_lock():
                continue  # a takeover is under way: whose the lease is shows next time
            try:
                held = read_holder(self.file)
                if held is not None and held.token == self.me.token:
                    write_atomically(self.file, json.dumps(asdict(self._now())))
                    continue
            finally:
                self._lock.unlink(missing_ok=True)
            taker = held.describe() if held else "nobody (the file was removed)"
            print(
                f"warning: the lease on {self.file.parent} was taken over by {taker} "
                "while this run was not renewing it; this run stops renewing",
                file=sys.stderr,
                flush=True,
            )
            return

    def _held_message(self, held: Holder) -> str:
        age = time.time() - held.heartbeat
        how_to_stop = f"scancel {held.slurm_job}" if held.slurm_job else f"kill {held.pid}"
        if held.ray_job:
            how_to_stop = f"python launch/submit.py --address <dashboard> stop {held.ray_job}"
        return (
            f"run.output_dir={self.file.parent} is in use by another run ({held.describe()}; "
            f"heartbeat {age:.0f} s ago). Wait for it to end, stop it ({how_to_stop}), or "
            "choose another run.output_dir (or run.name). If that run is gone, its lease is "
            f"taken over once its heartbeat is {self.stale_after_s:g} s old "
            "(run.lease_stale_s)"
        )
