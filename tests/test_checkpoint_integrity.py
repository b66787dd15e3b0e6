"""Checkpoint integrity: every file of a checkpoint recorded with its size and checksum;
a damaged newest checkpoint (truncated, missing or changed file) set aside for the newest
intact one, which the run then resumes from exactly; an explicit damaged one refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from framework import checkpoint
from framework.checkpoint import CheckpointError, step_dir
from framework.checkpoint_integrity import DAMAGED_PREFIX, damage, file_digest
from framework.run_dir import COMMIT_MARKER
from tests.helpers import RUN, assert_same_run, compose_config, run


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
    explicit = compose_config([f"run.checkpoint_dir={tmp_path / 'new'}", f"trainer.resume={aside}"])
    with pytest.raises(CheckpointError, match=rf"trainer\.resume=.*is damaged: .*/{shard.name} "):
        checkpoint.check_resume(explicit)


def test_a_run_resumes_exactly_from_the_checkpoint_it_fell_back_to(straight, tmp_path):
    out = tmp_path / "run"
    root = out / "checkpoints"
    for step in (2, 4):
        shutil.copytree(step_dir(straight / "run" / "checkpoints", step), step_dir(root, step))
    damage_file(next(step_dir(root, 4).glob("*model_states.pt")), "changed")
    cfg = compose_config([*RUN, f"run.output_dir={out}", f"run.cache_dir={tmp_path / 'cache'}"])
    assert checkpoint.check_resume(cfg) == step_dir(root, 2)
    run(out, tmp_path / "cache", "trainer.keep_checkpoints=1")
    assert_same_run(out, straight / "run", steps=[3, 4, 5, 6], rtol=1e-6)
    # Rotation kept the newest (intact) checkpoint only; the damaged one was set aside.
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == [
        f"{DAMAGED_PREFIX}step_00000004",
        "step_00000006",
    ]
