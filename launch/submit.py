"""Submit a training run to a running Ray cluster as a Ray job, and manage such jobs.

python launch/submit.py --address http://HEAD:8265 -- run.output_dir=/shared/runs/a model=...
python launch/submit.py --address http://HEAD:8265 list
python launch/submit.py --address http://HEAD:8265 logs raysubmit_XXXX
python launch/submit.py --address http://HEAD:8265 stop raysubmit_XXXX

Everything after `--` is a Hydra override for launch/train.py, which runs on the cluster
in a copy of this repository (see framework/cluster/ray_jobs.py for what that implies:
run.output_dir on shared storage, secrets in the nodes' environment). Submitting prints
the job id and follows its logs. Submitting and `logs` exit with the job's exit code: the
driver's own where Ray reports it (75: stopped, resumable), else 0 for SUCCEEDED, 1 for
FAILED and 143 for STOPPED. Ctrl-C stops following, not the job. A head that stops
answering while a job is followed (its host lost, the job with it) ends the command with
one line saying so and the command that resumes the run, exit code 1.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from datetime import datetime

from framework.cluster import ray_jobs
from framework.config.schema import ConfigError

# Ctrl-C: what a shell reports for a process ended by SIGINT.
EXIT_INTERRUPTED = 130
# The head lost while following: the job is gone with it, and nothing says how it ended.
EXIT_HEAD_LOST = 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Submit launch/train.py to a Ray cluster (overrides after --), or "
        "list, follow or stop its jobs.",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="the Ray dashboard, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, "
        "else RAY_ADDRESS)",
    )
    parser.add_argument(
        "--python",
        default="python",
        help="the Python that runs launch/train.py on the cluster, where the project's "
        "environment is installed (default: python)",
    )
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("list", help="the submitted jobs: id, status, start time, overrides")
    for name, what in (("logs", "follow a job's logs until it ends"), ("stop", "stop a job")):
        commands.add_parser(name, help=what).add_argument("job_id")
    return parser


def main(argv: list[str]) -> int:
    # Overrides go after `--`, taken as they are (argparse would read `--` as its own).
    options, submitting, overrides = _split(argv)
    parser = _parser()
    args = parser.parse_args(options)
    if submitting == bool(args.command):
        parser.error("give Hydra overrides after -- to submit a run, or one of: list, logs, stop")
    if not args.address:
        parser.error("no cluster: pass --address or set RAY_API_SERVER_ADDRESS or RAY_ADDRESS")
    try:
        if submitting:
            return _submit(args, overrides)
        return _manage(args)
    except ConfigError as err:  # refused before anything reached the cluster
        parser.error(str(err))
    except (ConnectionError, RuntimeError) as err:  # what Ray's client raises
        sys.exit(f"error: {err}")


def _split(argv: list[str]) -> tuple[list[str], bool, list[str]]:
    if "--" not in argv:
        return argv, False, []
    at = argv.index("--")
    return argv[:at], True, argv[at + 1 :]


def _submit(args: argparse.Namespace, overrides: list[str]) -> int:
    client, job_id = ray_jobs.submit(args.address, overrides, args.python)
    print(f"submitted {job_id}", flush=True)
    again = shlex.join([*_invocation(args), "--", *overrides])
    return _follow(client, job_id, args.address, again)


def _invocation(args: argparse.Namespace) -> list[str]:
    python = [] if args.python == "python" else ["--python", args.python]
    return ["python", "launch/submit.py", "--address", args.address, *python]


def _manage(args: argparse.Namespace) -> int:
    client = ray_jobs.connect(args.address)
    if args.command == "list":
        for job in ray_jobs.submissions(client):
            print(
                f"{job.submission_id}  {job.status.value:<9}  {_started(job)}  "
                f"{ray_jobs.overrides_of(job)}"
            )
    elif args.command == "stop":
        if ray_jobs.stop(client, args.job_id):
            print(f"{args.job_id} is stopping; a run already training checkpoints first")
        else:
            print(f"{args.job_id} had already ended")
    else:
        again = shlex.join([*_invocation(args), "--"]) + " <the job's overrides>"
        return _follow(client, args.job_id, args.address, again)
    return 0


def _follow(client: ray_jobs.JobSubmissionClient, job_id: str, address: str, again: str) -> int:
    """Follow the job to its end; `again` is the command that submits it anew."""
    try:
        job = ray_jobs.follow(client, job_id, address, lambda text: print(text, end="", flush=True))
    except ray_jobs.HeadLost:
        print(
            f"\nerror: the Ray head at {address} stopped answering while {job_id} ran: its "
            "host is lost, and the job's driver with it (a Ray job runs on the head). Its "
            "committed checkpoints in run.output_dir are kept: once the cluster is back, "
            f"resume from the newest with: {again}",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_HEAD_LOST
    except KeyboardInterrupt:
        print(
            f"\n{job_id} keeps running; stop it with: "
            f"python launch/submit.py --address {address} stop {job_id}",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    code = ray_jobs.exit_code(job)
    print(f"{job_id} {job.status.value} (exit code {code})", flush=True)
    return code


def _started(job: ray_jobs.JobDetails) -> str:
    if not job.start_time:
        return "-"
    return datetime.fromtimestamp(job.start_time / 1000).isoformat(" ", "seconds")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
