"""What the console shows of a Ray job: Ray's worker_process_setup_hook, which runs in
every process of the job (the controller and its helper actors too), so it imports nothing
heavy. Records of a UserError and of Ray Train's shutdown go to train.log instead."""

from __future__ import annotations

import logging
import os
import threading
import traceback
from pathlib import Path


class UserError(RuntimeError):
    """A worker's error that names the problem and the fix (a config value, data, a
    damaged checkpoint, no space): the driver shows its message alone, as one line."""


# Where Ray Train logs a worker's error (on the worker, in the controller) and the
# tracebacks it calls harmless (a resource request or its placement-group cleaner timing
# out on a busy machine or at shutdown); the records go to the console unless
# keep_off_console drops them.
_RAY_TRAIN_LOGGERS = (
    "ray.train.v2._internal.util",
    "ray.train.v2._internal.callbacks.placement_group_callback",
    "ray.train.v2._internal.execution.controller.placement_group_cleaner",
    "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
)
_OFF_CONSOLE = (
    f"{UserError.__module__}.{UserError.__name__}: ",
    "Failed to stop PlacementGroupCleaner gracefully",
    "Monitor thread did not exit",
    "Failed to send resource request",
)
# Ray Train's account of workers failing (the failure policy's decision with every
# rank's traceback; the backend's failed shutdown after a lost worker): all to train.log,
# where ray_failures.FailureNotice says it on the console in one line.
_ALL_TO_TRAIN_LOG = (
    "ray.train.v2._internal.execution.failure_handling.default",
    "ray.train.v2._internal.callbacks.backend_setup",
)
# The cleaner's monitor thread dies with a traceback when the cluster shuts down first.
_CLEANER_THREAD = "PlacementGroupCleanerMonitor"
TRAIN_LOG_ENV = "INSTRUCT_SFT_TRAIN_LOG"
# Ray Train logs each ray.train.report of every worker, its whole metrics dict, at INFO on a
# logger named after this file (the path of ray/train/v2/_internal/execution/context.py).
_REPORT_LOGGER_FILE = ("train", "v2", "_internal", "execution", "context.py")


def keep_off_console() -> None:
    """Ray's worker_process_setup_hook, in every process of the job (workers, the
    controller): Ray Train's records of a UserError (their tracebacks; the driver prints
    the message as one line) and of its shutdown go to train.log, not the console; its
    records of each report are dropped (the metrics are in metrics.jsonl)."""
    import ray  # loaded already in every process of a Ray job

    # Ray Train's placement group cleaner asks Ray's state API about the controller with
    # no address, and Ray then takes the last cluster `ray start` made on this machine
    # (/tmp/ray/ray_current_cluster). Where that one is gone, the call waits on it, and
    # every run's end waited 12 s for the cleaner to give up (measured: 15.6 s from the
    # last step to "done" on the tiny model, 2.8 s with this). This job's own cluster.
    os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    log = Path(os.environ[TRAIN_LOG_ENV])
    reports = Path(ray.__file__).parent.joinpath(*_REPORT_LOGGER_FILE)
    logging.getLogger(str(reports)).setLevel(logging.WARNING)
    for name in _RAY_TRAIN_LOGGERS:
        logging.getLogger(name).addFilter(_ToTrainLog(log, _OFF_CONSOLE))
    for name in _ALL_TO_TRAIN_LOG:
        logging.getLogger(name).addFilter(_ToTrainLog(log, ("",)))
    console_hook = threading.excepthook

    def cleaner_to_train_log(args: threading.ExceptHookArgs) -> None:
        if args.thread is not None and args.thread.name == _CLEANER_THREAD:
            trace = traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)
            append_to_train_log(log, f"thread {_CLEANER_THREAD}:\n{''.join(trace)}")
        else:
            console_hook(args)

    threading.excepthook = cleaner_to_train_log


class _ToTrainLog(logging.Filter):
    """Records with one of `markers` in their text go to train.log, not the console."""

    def __init__(self, log: Path, markers: tuple[str, ...]):
        super().__init__()
        self.log = log
        self.markers = markers

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        if not any(marker in text for marker in self.markers):
            return True
        append_to_train_log(self.log, text)
        return False


def append_to_train_log(log: Path, text: str) -> None:
    with log.open("a", encoding="utf-8") as handle:
        handle.write(f"[pid {os.getpid()}] {text.rstrip()}\n")
