"""python benchmarks/launchers.py

Per-step overhead of Ray Train (launch/train.py) over plain torchrun
(benchmarks/torchrun_train.py): the same config and training loop under each launcher, in
interleaved rounds (torchrun first in each), a fresh run directory per launch, medians read
from each run's metrics file. 2 and 1 workers on CPU, one per GPU (at most 2) on a GPU
machine. Run from the repository root:

    python benchmarks/launchers.py            # full: 3 rounds of 30 steps per launcher
    python benchmarks/launchers.py --quick    # a smoke run: 1 round of 6 steps

Writes one markdown table (workers x launcher: median step time, tokens/s, Ray's overhead
against torchrun per round, time to first step, MFU) with notes and the exact commands it
launched to its results page (--out) and stdout; progress and failures go to stderr.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import common  # first: it puts the repository root on sys.path
import torch

from framework.run.files import METRICS_FILE

RAY, TORCHRUN = "Ray Train (launch/train.py)", "torchrun (benchmarks/torchrun_train.py)"
LAUNCHER_SLUGS = {TORCHRUN: "torchrun", RAY: "ray_train"}  # their run directories' names
FULL = {"steps": 30, "skip": 5, "rounds": 3}
QUICK = {"steps": 6, "skip": 2, "rounds": 1}

# (workers, launcher) -> round -> that launch's medians
Measured = dict[tuple[int, str], dict[int, dict]]


# --------------------------------------------------------------------------- one launch


def read_metrics(run_dir: Path) -> list[dict]:
    """The run's step lines (evaluation lines carry no loss)."""
    path = run_dir / METRICS_FILE
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [line for line in lines if "loss" in line]


def first_metrics_line(run_dir: Path) -> bool:
    path = run_dir / METRICS_FILE
    return path.exists() and b"\n" in path.read_bytes()


def launch(commands: list[list[str]], run_dir: Path, log: Path) -> float:
    """Run `commands` one after the other from the repository root; returns the seconds from
    starting the first to the first complete line of the run's metrics file (polled every
    20 ms). Raises with the log's tail when a command fails."""
    started, first = time.perf_counter(), None
    with log.open("w") as out:
        for command in commands:
            process = subprocess.Popen(
                command, cwd=common.ROOT, stdout=out, stderr=subprocess.STDOUT
            )
            while process.poll() is None:
                if first is None and first_metrics_line(run_dir):
                    first = time.perf_counter() - started
                time.sleep(0.02)
            if process.returncode != 0:
                tail = "\n".join(log.read_text().splitlines()[-15:])
                raise RuntimeError(f"{' '.join(command)} exited {process.returncode}:\n{tail}")
    if first is None:
        raise RuntimeError(f"no metrics line in {run_dir}")
    return first


def measure_launch(commands: list[list[str]], run_dir: Path, skip: int) -> dict | str:
    """One launch: its medians over steps after `skip`, or why it failed."""
    try:
        first = launch(commands, run_dir, run_dir.with_suffix(".log"))
    except RuntimeError as error:
        common.progress(f"failed: {' '.join(commands[-1])}: {error}")
        return str(error).splitlines()[0]
    metrics = [m for m in read_metrics(run_dir) if m["step"] > skip]
    return {
        "step_time_s": common.median(metrics, "step_time_s"),
        "tokens_per_s": common.median(metrics, "tokens_per_s"),
        "mfu": common.median(metrics, "mfu") if "mfu" in metrics[0] else None,
        "first_step_s": first,
    }


# --------------------------------------------------------------------------- commands


def launcher_overrides(run_dir: Path, cache_dir: Path, steps: int, workers: int) -> list[str]:
    gpu = torch.cuda.is_available()
    return [
        *common.DATA_OVERRIDES,
        f"run.output_dir={run_dir}",
        f"run.cache_dir={cache_dir}",
        f"cluster.num_workers={workers}",
        f"cluster.use_gpu={str(gpu).lower()}",
        f"trainer.max_steps={steps}",
        "trainer.log_every=1",
        # Steps only: no evaluation before, between or after them.
        "eval.every=0",
        "eval.suite_per_family=0",
    ]


def launcher_workers() -> list[int]:
    """Workers per launch: one per GPU (at most 2); on CPU both 2 (every core busy) and 1
    (a spare core for the launcher's own processes, as on a GPU node)."""
    if torch.cuda.is_available():
        return [min(2, torch.cuda.device_count())]
    return [2, 1]


def launcher_commands(
    workdir: Path, steps: int, workers: int, round_: int
) -> dict[str, tuple[list[list[str]], Path]]:
    """name -> (commands run one after the other, run directory of this round)."""
    python, cache = sys.executable, workdir / "cache"
    ray_dir = workdir / f"{LAUNCHER_SLUGS[RAY]}-{workers}w-{round_}"
    torchrun_dir = workdir / f"{LAUNCHER_SLUGS[TORCHRUN]}-{workers}w-{round_}"
    entry = "benchmarks/torchrun_train.py"  # commands run from the repository root
    ray = [python, "launch/train.py", *launcher_overrides(ray_dir, cache, steps, workers)]
    prepare = [python, entry, "--prepare", *launcher_overrides(torchrun_dir, cache, steps, workers)]
    torchrun_bin = Path(python).with_name("torchrun")
    torchrun = (
        [str(torchrun_bin)] if torchrun_bin.exists() else [python, "-m", "torch.distributed.run"]
    )
    torchrun += ["--standalone", f"--nproc_per_node={workers}"]
    return {
        TORCHRUN: ([prepare, [*torchrun, entry, str(torchrun_dir)]], torchrun_dir),
        RAY: ([ray], ray_dir),
    }


def shown_command(command: list[str]) -> str:
    """`command` as the notes show it: `python` for this interpreter, a binary by name."""
    program = "python" if command[0] == sys.executable else Path(command[0]).name
    return " ".join([program, *command[1:]])


# --------------------------------------------------------------------------- rounds


def run_rounds(
    workdir: Path, steps: int, skip: int, rounds: int
) -> tuple[Measured, dict[tuple[int, str], str], list[str]]:
    """For each worker count, the launchers in turn (torchrun first), `rounds` times.
    Returns what each launch measured, why launches failed, and the first round's commands."""
    measured: Measured = {}
    failed: dict[tuple[int, str], str] = {}
    shown: list[str] = []
    for workers in launcher_workers():
        for round_ in range(rounds):
            runs = launcher_commands(workdir, steps, workers, round_)
            for name, (commands, run_dir) in runs.items():
                if round_ == 0:
                    shown += [shown_command(c) for c in commands]
                result = measure_launch(commands, run_dir, skip)
                if isinstance(result, str):
                    failed[workers, name] = result
                    continue
                measured.setdefault((workers, name), {})[round_] = result
                common.progress(
                    f"{workers} worker(s), round {round_ + 1}/{rounds}: {name}: step "
                    f"{result['step_time_s']:.3f} s, first step after "
                    f"{result['first_step_s']:.1f} s"
                )
    return measured, failed, shown


def overhead_row(workers: int, name: str, by_round: dict[int, dict], base: dict[int, dict]) -> str:
    """Medians over rounds; Ray's overhead per round against that round's torchrun."""
    results = list(by_round.values())
    ratios = [
        r["step_time_s"] / base[i]["step_time_s"] - 1 for i, r in by_round.items() if i in base
    ]
    overhead = (
        f"{statistics.median(ratios):+.2%} ({', '.join(f'{r:+.1%}' for r in ratios)})"
        if ratios and name == RAY
        else "—"
    )
    mfu = [r["mfu"] for r in results if r["mfu"] is not None]
    return (
        f"| {workers} | {name} | {common.median(results, 'step_time_s'):.3f} "
        f"| {common.median(results, 'tokens_per_s'):,.0f} | {overhead} "
        f"| {common.median(results, 'first_step_s'):.1f} "
        f"| {f'{statistics.median(mfu):.1%}' if mfu else 'n/a'} |"
    )


def overhead_table(measured: Measured, failed: dict[tuple[int, str], str]) -> list[str]:
    lines = common.table_header(
        "workers",
        "launcher",
        "median step_time_s",
        "tokens/s",
        "Ray's overhead vs torchrun (per round)",
        "time to first step (s)",
        "MFU",
    )
    for workers in launcher_workers():
        base = measured.get((workers, TORCHRUN), {})
        for name in (TORCHRUN, RAY):
            by_round = measured.get((workers, name), {})
            if not by_round:
                lines.append(f"| {workers} | {name} | not run: {failed.get((workers, name))} |||||")
                continue
            lines.append(overhead_row(workers, name, by_round, base))
    return lines


def overhead_notes(steps: int, skip: int, rounds: int, commands: list[str]) -> list[str]:
    return [
        f"The launchers in turn, {rounds} round(s) ({steps} steps each, torchrun first), "
        "a fresh run directory each time, the same config: data=alpaca_demo, "
        f"max_seq_len {common.MAX_SEQ_LEN}, 2 and 1 workers on CPU (1 per GPU on a GPU machine, at "
        "most 2) x "
        "micro batch 4 rows, ZeRO stage 2, one thread per worker (Ray sets OMP_NUM_THREADS "
        "= cluster.cpus_per_worker; the torchrun entry sets the same), logger=none.",
        "- step_time_s: framework.train.step.train_step's own time (max over ranks) from each "
        f"run's {METRICS_FILE}, median over steps {skip + 1}..{steps}; overhead = Ray's / "
        "torchrun's - 1 (target <= 2.5%).",
        "- time to first step: from starting the launcher's process (for torchrun, the driver "
        f"step `--prepare`, then torchrun) to the first complete line of {METRICS_FILE}, "
        "polled every 20 ms; both include composing the config, prepare_run (the data "
        "artifact is already cached), process start-up, model + engine build and the packing "
        "self-check.",
        "- Commands (from the repository root):",
        *[f"  `{c}`" for c in commands],
    ]


def main() -> None:
    args = common.arg_parser(
        __doc__, "launchers", "a smoke run: 1 round of 6 steps per launcher"
    ).parse_args()
    mode = QUICK if args.quick else FULL
    steps, skip, rounds = mode["steps"], mode["skip"], mode["rounds"]
    with common.bench_workdir("bench-launchers-") as workdir:
        measured, failed, commands = run_rounds(workdir, steps, skip, rounds)
    body = [*overhead_table(measured, failed), "", *overhead_notes(steps, skip, rounds, commands)]
    common.write_results_page(args.out, "Ray Train's per-step overhead over torchrun", body)


if __name__ == "__main__":
    main()
