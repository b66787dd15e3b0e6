"""python benchmarks/checkpoint_verify.py [--zero 2|3] [--quick]

What verifying a checkpoint costs, on the largest one this machine makes: a full
fine-tune of SmolLM2-135M-Instruct (the real model, bf16 with fp32 master weights and
AdamW's two moments: DeepSpeed's layout of an 8B run, 14 bytes a parameter) after one
training step on two gloo ranks, saved by framework.train.checkpoint.save.

- save side: `framework.run.integrity.manifest`, the collective in every save, where each
  rank checksums the files it wrote, just written (page cache);
- resume side: `framework.run.integrity.damage`, what the driver's `check_resume` runs on
  the newest checkpoint before any worker starts, from the page cache and cold (each
  file's pages dropped with posix_fadvise, so this disk's reads are measured);
- zlib's CRC-32 on one core, over a buffer in memory, for comparison: reading a file
  from the page cache (a copy) costs more than checksumming it.

Then, on paper, an 8B full fine-tune on 8 ranks a node, 1 and 2 nodes, at the measured
speed of one rank reading and checksumming its files. The results page is
benchmarks/results/checkpoint_verify.md.

    python benchmarks/checkpoint_verify.py            # about a minute on 2 cores
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import zlib
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from common import arg_parser, bench_workdir, free_port, progress, table_header, write_results_page

from framework.commands.compose import compose_train_config
from framework.commands.prepare import prepare_run
from framework.data.loader import run_batches
from framework.run import integrity
from framework.run.checkpoints import committed
from framework.run.files import COMMIT_MARKER, TOKENIZER_DIR, artifact_path
from framework.run.integrity import damage, manifest, shares
from framework.train import checkpoint
from framework.train.engine import build_training_engine
from framework.train.objective import build_objective
from framework.train.step import train_step

WORLD = 2
GB = 1e9
# The real model, one short row a step: the step only has to make AdamW's state.
BASE = [
    "model=smollm2_135m",
    "logger=none",
    "trainer.verify_packing=false",
    "trainer.precision=bf16",
    "trainer.micro_batch_size=1",
    "trainer.grad_accum_steps=1",
    "data.max_seq_len=128",
]


def _rank(rank: int, port: int, cfg, repeats: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(Path(cfg.run.output_dir) / TOKENIZER_DIR)
    device = torch.device("cpu")
    engine, _zero3 = build_training_engine(
        cfg, tokenizer, rank=rank, world_size=WORLD, device=device, universal=False
    )
    artifact = artifact_path(cfg.run.output_dir)
    batches = run_batches(artifact, cfg, rank=rank, world_size=WORLD, pad_id=tokenizer.pad_token_id)
    train_step(engine, iter(batches), 1, device, objective=build_objective(cfg))
    began = time.perf_counter()
    path = checkpoint.save(engine, cfg, 1, sampler_state={}, totals={}, tokenizer=tokenizer)
    save_s = time.perf_counter() - began
    timed = []
    for _ in range(repeats):
        dist.barrier()
        began = time.perf_counter()
        manifest(path)  # a collective: it ends with the slowest rank
        timed.append(time.perf_counter() - began)
    if rank == 0:
        Path(out).write_text(json.dumps({"path": str(path), "save_s": save_s, "manifest_s": timed}))
    dist.barrier()
    sys.stdout.flush()
    os._exit(0)  # as tests.helpers.spawn: skip a teardown that rarely aborts a rank


def drop_from_page_cache(path: Path) -> None:
    """Each file's clean pages out of the page cache (this checkpoint's only)."""
    for file in path.rglob("*"):
        if file.is_file():
            fd = os.open(file, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def timed_damage(path: Path, repeats: int, cold: bool) -> float:
    """The median seconds of `damage(path)` (which must find it intact)."""
    seconds = []
    for _ in range(repeats):
        if cold:
            drop_from_page_cache(path)
        began = time.perf_counter()
        assert damage(path) is None
        seconds.append(time.perf_counter() - began)
    return statistics.median(seconds)


def crc_gb_per_s(megabytes: int = 256, repeats: int = 5) -> float:
    """zlib.crc32 on one core, over a buffer in memory (16 MB reads, as file_digest)."""
    data = os.urandom(megabytes << 20)
    view = memoryview(data)
    chunk = 16 << 20
    best = float("inf")
    for _ in range(repeats):
        began = time.perf_counter()
        crc = 0
        for start in range(0, len(data), chunk):
            crc = zlib.crc32(view[start : start + chunk], crc)
        best = min(best, time.perf_counter() - began)
    return len(data) / best / GB


def rank_bytes(sizes: dict[str, int], dealt: list[list[str]]) -> list[int]:
    return [sum(sizes[name] for name in share) for share in dealt]


def round_robin(names: list[str], world: int) -> list[list[str]]:
    """The shares before: sorted names dealt out in turn, whoever wrote them."""
    return [sorted(names)[rank::world] for rank in range(world)]


# ------------------------------------------------------------------------------ on paper


def layout_8b(stage: int, world: int, params: float = 8.03e9) -> dict[str, int]:
    """File name -> bytes of an 8B full fine-tune's checkpoint (bf16, fp32 masters, AdamW)
    as DeepSpeed names them: the bf16 weights whole by rank 0 (ZeRO-2) or in each rank's
    small model-states file (ZeRO-3, where the weights live in the optimizer shards), and
    12 bytes a parameter of fp32 state in one optimizer shard a rank."""
    files = {f"bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt": int(12 * params / world)
             for r in range(world)}  # fmt: skip
    if stage == 3:
        files |= {f"zero_pp_rank_{r}_mp_rank_00_model_states.pt": 10**5 for r in range(world)}
    else:
        files["mp_rank_00_model_states.pt"] = int(2 * params)
    files |= {f"rng_rank{r:05d}.pt": 16_000 for r in range(world)}
    return files | {"progress.json": 400, "config.yaml": 3_000, "tokenizer/tokenizer.json": 9e6}


def projection(crc: float, per_node: int = 8) -> list[str]:
    """The 8B checkpoint's verification on paper, from `crc` GB/s a core (a file read from
    the page cache and checksummed)."""
    lines = table_header(
        "8B layout", "ranks", "GB", "save: most a rank reads, before", "read across nodes, before",
        "save: most a rank reads, now", "save now (1 core a rank)",
        "resume on the driver (8 threads), 12.5 / 3.1 GB/s link",
    )  # fmt: skip
    for stage in (2, 3):
        for nodes in (1, 2):
            world = per_node * nodes
            sizes = layout_8b(stage, world)
            names = sorted(sizes)
            old, new = round_robin(names, world), shares(names, world)
            node = {name: (integrity.writer_rank(name) or 0) // per_node
                    for name in names}  # fmt: skip
            across = sum(sizes[n] for r, share in enumerate(old) for n in share
                         if node[n] != r // per_node)  # fmt: skip
            total = sum(sizes.values())
            most_new = max(rank_bytes(sizes, new))
            # The driver reads at its 8 threads' checksum speed or its link's, the lower.
            resume = [total / GB / min(8 * crc, link) for link in (12.5, 3.125)]
            lines.append(
                f"| ZeRO-{stage} | {nodes} x {per_node} | {total / GB:.0f} "
                f"| {max(rank_bytes(sizes, old)) / GB:.1f} GB | {across / GB:.0f} GB "
                f"| {most_new / GB:.1f} GB | {most_new / GB / crc:.1f} s "
                f"| {resume[0]:.0f} s / {resume[1]:.0f} s |"
            )
    return lines


# ------------------------------------------------------------------------------ main


def measure(work: Path, zero: int, repeats: int) -> dict:
    cfg = compose_train_config(
        [*BASE, f"parallelism=zero{zero}", f"run.output_dir={work / 'run'}",
         f"run.cache_dir={work / 'cache'}"]
    )  # fmt: skip
    progress("preparing the run (the real model converted once, ~25 s)")
    cfg = prepare_run(cfg).cfg
    out = work / "result.json"
    progress(f"two ranks: build, one step, save, manifest x {repeats}")
    mp.spawn(_rank, args=(free_port(), cfg, repeats, str(out)), nprocs=WORLD, join=True)
    result = json.loads(out.read_text())
    path = Path(result["path"])
    assert committed(path.parent) == [path]
    marker = json.loads((path / COMMIT_MARKER).read_text())["files"]
    sizes = {name: digest["size"] for name, digest in marker.items()}
    progress("driver: damage, warm and cold")
    return result | {
        "sizes": sizes,
        "damage_warm_s": timed_damage(path, repeats, cold=False),
        "damage_cold_s": timed_damage(path, repeats, cold=True),
        "crc_gb_s": crc_gb_per_s(),
    }


def measured_table(r: dict, zero: int) -> list[str]:
    total = sum(r["sizes"].values()) / GB
    names = sorted(r["sizes"])
    now, before = (
        rank_bytes(r["sizes"], shares(names, WORLD)),
        rank_bytes(r["sizes"], round_robin(names, WORLD)),
    )
    manifest_s = statistics.median(r["manifest_s"])
    lines = table_header("what", "GB", "seconds", "GB/s")
    lines += [
        f"| save side: manifest, {WORLD} ranks each its own files "
        f"({' + '.join(f'{b / GB:.2f}' for b in now)} GB; round-robin before: "
        f"{' + '.join(f'{b / GB:.2f}' for b in before)} GB) | {total:.2f} | {manifest_s:.2f} "
        f"| {total / manifest_s:.2f} |",
        f"| (the whole save, manifest included) | {total:.2f} | {r['save_s']:.1f} | |",
        f"| resume side: damage on the driver, page cache, "
        f"{integrity._VERIFY_THREADS} threads | {total:.2f} "
        f"| {r['damage_warm_s']:.2f} | {total / r['damage_warm_s']:.2f} |",
        f"| resume side: damage on the driver, cold (this disk) | {total:.2f} "
        f"| {r['damage_cold_s']:.2f} | {total / r['damage_cold_s']:.2f} |",
        f"| zlib CRC-32, one core, in memory | | | {r['crc_gb_s']:.2f} |",
    ]
    return [
        f"SmolLM2-135M-Instruct, full fine-tune, bf16 + fp32 masters + AdamW, ZeRO-{zero}, "
        f"{WORLD} gloo ranks: {len(names)} files, {total:.2f} GB. Medians of the repeats.",
        "",
        *lines,
    ]


def per_core(r: dict) -> float:
    """GB/s of one rank reading its files back from the page cache and checksumming them:
    the save side's rank with the most bytes over the manifest's time."""
    names = sorted(r["sizes"])
    return (
        max(rank_bytes(r["sizes"], shares(names, WORLD))) / GB / statistics.median(r["manifest_s"])
    )


def paper(crc: float) -> list[str]:
    return [
        "## An 8B full fine-tune, on paper",
        "",
        f"From the speed measured above of one rank reading its files back from the page "
        f"cache and checksumming them ({crc:.2f} GB/s a core) and DeepSpeed's file "
        "layout (bf16 weights, fp32 masters and AdamW's two moments: 14 bytes a parameter; "
        "ZeRO-2 writes the bf16 weights whole from rank 0, ZeRO-3 keeps them in the "
        "optimizer shards), 8 ranks a node. Before, each rank checksummed every "
        "world-th file in name order, whoever wrote it: on 2 nodes, files written on the "
        "other node are read back over the network (`read across nodes`). Now each rank "
        "reads back only the files it wrote, from its own node's page cache, one core a "
        "rank: the save waits for the rank with the most (rank 0 under ZeRO-2: the whole "
        "weights and its optimizer shard). The resume-side check runs on the driver alone, "
        "before any worker starts, 8 files at a time: bound by the lower of 8 cores' "
        "checksums and the driver's link to the file system (12.5 GB/s = 100 Gb/s; "
        "3.1 GB/s = 25 Gb/s), whatever the number of nodes.",
        "",
        *projection(crc),
        "",
        "With the 16 bytes a parameter often quoted (128 GB: fp32 gradients kept too), "
        "scale the GB and seconds by 16/14.",
    ]


def main() -> None:
    parser = arg_parser(__doc__, "checkpoint_verify", "one repeat each")
    parser.add_argument("--zero", type=int, choices=(2, 3), default=2)
    args = parser.parse_args()
    repeats = 1 if args.quick else 3
    with bench_workdir("bench-checkpoint-verify-") as work:
        result = measure(work, args.zero, repeats)
    body = [*measured_table(result, args.zero), "", *paper(per_core(result))]
    write_results_page(args.out, "Checkpoint verification: what it costs", body)


if __name__ == "__main__":
    main()
