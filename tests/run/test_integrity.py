"""Checkpoint integrity: every file of a checkpoint recorded with its size and checksum,
each checksummed by the rank that wrote it; a damaged newest checkpoint (truncated, missing
or changed file) set aside for the newest intact one, which the run then resumes from
exactly; an explicit damaged one refused."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from framework.commands.prepare import prepare_run
from framework.run import integrity
from framework.run.checkpoints import CheckpointError, step_dir
from framework.run.files import COMMIT_MARKER
from framework.run.integrity import (
    DAMAGED_PREFIX,
    damage,
    file_digest,
    shares,
    writer_rank,
)
from framework.train import checkpoint
from tests.helpers import (
    RUN,
    assert_same_run,
    compose_config,
    run,
    spawn,
    train_rank,
)


def damage_file(file: Path, kind: str) -> None:
    """What a torn write, a lost file or a storage fault leaves."""
    if kind == "truncated":
        file.write_bytes(file.read_bytes()[:-100])
    elif kind == "missing":
        file.unlink()
    else:  # one byte changed, the size kept
        data = bytearray(file.read_bytes())
        data[len(data) // 2] ^= 0xFF
        file.write_bytes(bytes(data))


def test_the_commit_marker_records_every_file_with_its_size_and_checksum(straight):
    path = step_dir(straight / "run" / "checkpoints", 4)
    files = json.loads((path / COMMIT_MARKER).read_text())["files"]
    on_disk = {str(f.relative_to(path)) for f in path.rglob("*") if f.is_file()}
    assert set(files) == on_disk - {COMMIT_MARKER}
    assert {"rng_rank00000.pt", "rng_rank00001.pt", "progress.json"} <= set(files)
    assert len([n for n in files if n.endswith("optim_states.pt")]) == 2  # both ranks' shards
    for name, digest in files.items():
        assert digest == file_digest(path / name)
    assert damage(path) is None


@pytest.mark.parametrize("kind", ["truncated", "missing", "changed"])
def test_a_damaged_newest_checkpoint_is_set_aside_for_the_newest_intact_one(
    straight, tmp_path, capfd, kind
):
    root = tmp_path / "checkpoints"
    for step in (2, 4, 6):
        shutil.copytree(step_dir(straight / "run" / "checkpoints", step), step_dir(root, step))
    shard = sorted(step_dir(root, 6).glob("*optim_states.pt"))[1]
    damage_file(shard, kind)
    cfg = compose_config([f"run.checkpoint_dir={root}"])
    assert checkpoint.check_resume(cfg) == step_dir(root, 4)
    warning = capfd.readouterr().err
    assert f"{shard} " in warning and "damaged" in warning
    aside = root / f"{DAMAGED_PREFIX}{step_dir(root, 6).name}"
    assert aside.is_dir() and not step_dir(root, 6).exists()  # renamed, nothing deleted
    explicit = compose_config(
        [f"run.checkpoint_dir={tmp_path / 'new'}", f"checkpoint.resume={aside}"]
    )
    with pytest.raises(
        CheckpointError, match=rf"checkpoint\.resume=.*is damaged: .*/{shard.name} "
    ):
        checkpoint.check_resume(explicit)


def test_a_run_resumes_exactly_from_the_checkpoint_it_fell_back_to(straight, tmp_path):
    out = tmp_path / "run"
    root = out / "checkpoints"
    for step in (2, 4):
        shutil.copytree(step_dir(straight / "run" / "checkpoints", step), step_dir(root, step))
    damage_file(next(step_dir(root, 4).glob("*model_states.pt")), "changed")
    cfg = compose_config([*RUN, f"run.output_dir={out}", f"run.cache_dir={tmp_path / 'cache'}"])
    assert checkpoint.check_resume(cfg) == step_dir(root, 2)
    run(out, tmp_path / "cache", "checkpoint.keep=1")
    assert_same_run(out, straight / "run", steps=[3, 4, 5, 6], rtol=1e-6)
    # Rotation kept the newest (intact) checkpoint only; the damaged one was set aside.
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        f"{DAMAGED_PREFIX}step_00000004",
        "step_00000006",
    ]


# ------------------------------------------------------------------------------ who checks what


def test_each_file_is_checksummed_by_the_rank_its_name_says_wrote_it():
    """DeepSpeed's names at ZeRO 0-3 (fp32 and bf16) on 16 ranks, where rank_10 sorts
    before rank_2; ours; and files of no known writer, dealt out from the last rank."""
    written = {
        "mp_rank_00_model_states.pt": 0,  # ZeRO 0-2: the whole model, by rank 0
        "zero_pp_rank_10_mp_rank_00_optim_states.pt": 10,
        "bf16_zero_pp_rank_2_mp_rank_00_optim_states.pt": 2,
        "zero_pp_rank_15_mp_rank_00_model_states.pt": 15,  # ZeRO-3: each rank's weights
        "rng_rank00013.pt": 13,
        "progress.json": 0,
        "config.yaml": 0,
        "tokenizer/tokenizer.json": 0,
        "zero_pp_rank_3_mp_rank_01_model_states.pt": None,  # tensor parallelism: not ours
        "latest": None,
        "universal/zero/lm_head.weight/fp32.pt": None,
    }
    assert {name: writer_rank(name) for name in written} == written
    dealt = shares(sorted(written), 16)
    assert sorted(name for share in dealt for name in share) == sorted(written)
    for rank, share in enumerate(dealt):
        known = {name for name in share if written[name] is not None}
        assert known == {name for name, r in written.items() if r == rank}
    unknown = sorted(name for name, rank in written.items() if rank is None)
    assert unknown[0] in dealt[15] and unknown[1] in dealt[14] and unknown[2] in dealt[13]
    # A rank beyond the world (a checkpoint of more ranks) is no known writer either.
    assert shares(["rng_rank00002.pt", "rng_rank00000.pt"], 2) == [
        ["rng_rank00000.pt"],
        ["rng_rank00002.pt"],
    ]


# Each rank writes with its own group id: a file's group says which rank wrote it.
GROUP_OF_RANK_0 = 40_000


def _train_rank_recording(rank, world, port, cfg, report: Path):
    """A training rank that writes as group GROUP_OF_RANK_0 + rank and lists each file it
    checksums in report/rank<N>."""
    os.setegid(GROUP_OF_RANK_0 + rank)
    digest = integrity.file_digest

    def recorded(file: Path) -> dict:
        with (report / f"rank{rank}").open("a") as listing:
            listing.write(f"{file}\n")
        return digest(file)

    integrity.file_digest = recorded
    train_rank(rank, world, port, cfg)


@pytest.mark.parametrize("stage", [0, 2, 3])
def test_each_rank_checksums_exactly_the_files_it_wrote(tmp_path, stage):
    if os.geteuid() != 0:
        pytest.skip("each rank writes as its own group: needs root (setegid)")
    out, report = tmp_path / "run", tmp_path / "report"
    report.mkdir()
    overrides = [f"parallelism=zero{stage}", "trainer.max_steps=2", "eval.every=0"]
    cfg = compose_config(
        [*RUN, *overrides, f"run.output_dir={out}", f"run.cache_dir={tmp_path / 'cache'}"]
    )
    cfg = prepare_run(cfg).cfg
    spawn(_train_rank_recording, 2, cfg, report)
    path = step_dir(out / "checkpoints", 2)
    written: dict[int, set[str]] = {0: set(), 1: set()}
    for file in path.rglob("*"):
        if file.is_file() and file.name != COMMIT_MARKER:
            written[file.stat().st_gid - GROUP_OF_RANK_0].add(str(file.relative_to(path)))
    # ZeRO-0 keeps the whole optimizer state in rank 0's file; ZeRO 1-3 shard it.
    assert any(name.startswith("zero_pp_rank_1_") for name in written[1]) == (stage > 0)
    for rank, names in written.items():
        assert {name: writer_rank(name) for name in names} == dict.fromkeys(names, rank)
        checked = (report / f"rank{rank}").read_text().splitlines()
        assert {
            str(Path(f).relative_to(path)) for f in checked if f.startswith(f"{path}/")
        } == names
