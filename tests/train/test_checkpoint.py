"""Checkpoints through the real loop (`train.loop.train` on 1 or 2 gloo ranks, DeepSpeed ZeRO):
an interrupted and resumed run equals a straight one, on the same or another number of
ranks; incomplete, damaged or unsafe checkpoints are refused with a clear message."""

from __future__ import annotations

import errno
import json
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from framework.commands.prepare import prepare_run
from framework.run.checkpoints import (
    CheckpointError,
    committed,
    read_progress,
    step_dir,
    weights_only_loading,
)
from framework.run.files import COMMIT_MARKER
from framework.run.integrity import damage
from framework.train import checkpoint
from framework.train.loop import ZERO3_OTHER_LAYOUT_WARNING
from tests.helpers import (
    RUN,
    adapter_run,
    assert_same,
    assert_same_run,
    compose_config,
    losses,
    run,
    spawn,
    train_rank,
    weights,
)


def assert_same_run_other_layout(resumed: Path, straight: Path, steps: list[int]):
    """As across layouts in tests/train/test_step.py: losses within 1e-5, weights in norm."""
    got, want = losses(resumed), losses(straight)
    assert_same(
        {"losses": [got[s] for s in steps], "state": weights(resumed)},
        {"losses": [want[s] for s in steps], "state": weights(straight)},
    )


def test_checkpoints_hold_every_part_of_the_state(straight):
    out = straight / "run"
    assert [p.name for p in committed(out / "checkpoints")] == [
        "step_00000002",
        "step_00000004",
        "step_00000006",
    ]
    path = step_dir(out / "checkpoints", 4)
    progress = read_progress(path)
    assert progress["step"] == 4 and progress["world_size"] == 2
    # Mid-epoch: the sampler stands 4 steps x 2 ranks x 2 rows into its first epoch.
    assert progress["sampler"] == {"epoch": 0, "rows_done": 16}
    assert progress["totals"]["tokens"] > 0
    assert sorted(p.name for p in path.glob("rng_rank*.pt")) == [
        "rng_rank00000.pt",
        "rng_rank00001.pt",
    ]
    assert (path / "config.yaml").exists() and (path / "tokenizer" / "tokenizer.json").exists()
    assert list(path.glob("*optim_states.pt")) and list(path.glob("*model_states.pt"))


def test_a_resumed_run_ends_exactly_as_the_straight_run(straight, tmp_path):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    # Killed after step 4's checkpoint: only it survives, and the same command runs again.
    shutil.copytree(step_dir(straight / "run" / "checkpoints", 4), step_dir(out / "checkpoints", 4))
    run(out, straight / "cache")
    assert sorted(losses(out)) == [5, 6]  # it went on from step 4
    assert_same_run(out, straight / "run", [5, 6], rtol=1e-6)


def test_resume_on_one_rank_then_back_on_two(straight, tmp_path):
    """2 ranks -> 1 rank (twice the accumulation, the same global batch) -> 2 ranks."""
    one = tmp_path / "one"
    run(
        one,
        straight / "cache",
        f"checkpoint.resume={step_dir(straight / 'run' / 'checkpoints', 2)}",
        "trainer.grad_accum_steps=2",
        world=1,
    )
    assert sorted(losses(one)) == [3, 4, 5, 6]
    assert_same_run_other_layout(one, straight / "run", [3, 4, 5, 6])

    two = tmp_path / "two"
    run(two, straight / "cache", f"checkpoint.resume={step_dir(one / 'checkpoints', 4)}")
    assert sorted(losses(two)) == [5, 6]
    assert_same_run_other_layout(two, straight / "run", [5, 6])


@pytest.mark.slow
def test_a_zero3_checkpoint_of_two_ranks_resumes_on_one_with_its_weights(
    zero3_run, tmp_path, capfd
):
    """Weights come back exactly (step 3's loss, computed from them, is the same); DeepSpeed
    restores the optimizer state only approximately, which the run says (see the note)."""
    cache, straight_dir, one = zero3_run / "cache", zero3_run / "run", tmp_path / "one"
    checkpoints = straight_dir / "checkpoints"
    zero3_on_one_rank = ["parallelism=zero3", "trainer.max_steps=4", "trainer.grad_accum_steps=2"]
    run(one, cache, f"checkpoint.resume={step_dir(checkpoints, 2)}", *zero3_on_one_rank, world=1)
    assert ZERO3_OTHER_LAYOUT_WARNING in capfd.readouterr().out
    assert losses(one)[3] == pytest.approx(losses(straight_dir)[3], rel=1e-6)
    assert losses(one)[4] == pytest.approx(losses(straight_dir)[4], rel=1e-4)
    a, b = weights(one), weights(straight_dir)
    for name in a:
        assert (a[name] - b[name]).norm() / b[name].norm() < 1e-2, name


def test_an_unfinished_save_is_ignored_and_the_previous_checkpoint_chosen(straight, tmp_path):
    root = tmp_path / "checkpoints"
    for step in (2, 4):
        shutil.copytree(step_dir(straight / "run" / "checkpoints", step), step_dir(root, step))
    # A kill while step 4 was being written: files partly there, no commit marker yet.
    (step_dir(root, 4) / COMMIT_MARKER).unlink()
    shard = next(step_dir(root, 4).glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:100])
    cfg = compose_config([f"run.checkpoint_dir={root}"])
    assert checkpoint.check_resume(cfg) == step_dir(root, 2)
    with pytest.raises(CheckpointError, match="no COMMITTED marker"):
        read_progress(step_dir(root, 4))


def test_a_damaged_checkpoint_file_gives_a_clear_error(straight, tmp_path):
    path = tmp_path / "step"
    shutil.copytree(step_dir(straight / "run" / "checkpoints", 4), path)
    shard = next(path.glob("*optim_states.pt"))
    shard.write_bytes(shard.read_bytes()[:1000])
    with (
        pytest.raises(CheckpointError, match=f"{shard.name} cannot be loaded .* damaged"),
        weights_only_loading(),
    ):
        torch.load(shard)


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("this must never run",))

    file = tmp_path / "evil.pt"
    file.write_bytes(pickle.dumps({"state": Payload()}))
    with (
        pytest.raises(CheckpointError, match="cannot be loaded"),
        weights_only_loading(),
    ):
        torch.load(file)


def test_resume_never_refuses_a_directory_with_checkpoints(straight):
    cfg = compose_config(
        [f"run.checkpoint_dir={straight / 'run' / 'checkpoints'}", "checkpoint.resume=never"]
    )
    with pytest.raises(CheckpointError, match=r"checkpoint\.resume=never, but run\.checkpoint_dir"):
        checkpoint.check_resume(cfg)


def test_resume_from_a_path_that_is_not_a_checkpoint_is_named(tmp_path):
    cfg = compose_config([f"checkpoint.resume={tmp_path / 'nowhere'}"])
    with pytest.raises(CheckpointError, match="does not exist"):
        checkpoint.check_resume(cfg)


def test_the_saved_config_is_the_resolved_one(straight):
    saved = (step_dir(straight / "run" / "checkpoints", 2) / "config.yaml").read_text()
    cfg = compose_config(RUN)
    assert f"max_steps: {cfg.trainer.max_steps}" in saved
    assert "${" not in saved  # interpolations resolved


@pytest.mark.slow
def test_a_resumed_bf16_run_ends_exactly_as_the_straight_bf16_run(tmp_path):
    """bf16 weights are rounded from the fp32 masters the checkpoint holds, so they resume
    to the bit too."""
    straight = tmp_path / "straight"
    run(straight, tmp_path / "cache", "trainer.precision=bf16")
    out = tmp_path / "resumed"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(step_dir(straight / "checkpoints", 4), step_dir(out / "checkpoints", 4))
    run(out, tmp_path / "cache", "trainer.precision=bf16")
    assert sorted(losses(out)) == [5, 6]
    assert weights(out)["lm_head.weight"].dtype == torch.bfloat16
    assert_same_run(out, straight, [5, 6], rtol=1e-6)


# ------------------------------------------------------------------------------ adapters


def files_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_an_adapter_checkpoint_holds_only_the_trainable_weights(lora_run, straight):
    out, _, _ = lora_run
    path = step_dir(out / "checkpoints", 4)
    (model_states,) = path.glob("mp_rank_00_model_states.pt")
    with weights_only_loading():
        module = torch.load(model_states, map_location="cpu")["module"]
    assert module and all("lora_A" in name or "lora_B" in name for name in module), list(module)
    full = step_dir(straight / "run" / "checkpoints", 4)
    print(f"adapter checkpoint {files_size(path)} bytes, full {files_size(full)} bytes")
    # The tiny model's adapter has 1/8 of its weights; tokenizer and config weigh the same.
    assert files_size(path) < 0.5 * files_size(full)


def test_a_resumed_lora_run_ends_exactly_as_the_straight_one(tiny_model_dir, tmp_path):
    """With LoRA's dropout on: its masks are drawn from each rank's RNG, so the resumed run
    draws the straight run's masks only if the checkpoint's RNG states come back (a
    resume that skipped them passed every other test)."""
    lora = adapter_run(tiny_model_dir, "lora", "adapter.dropout=0.1")
    out, cache, resumed = tmp_path / "straight", tmp_path / "cache", tmp_path / "run"
    run(out, cache, *lora)
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copytree(step_dir(out / "checkpoints", 4), step_dir(resumed / "checkpoints", 4))
    run(resumed, cache, *lora)
    assert sorted(losses(resumed)) == [5, 6]
    got, want = losses(resumed), losses(out)
    np.testing.assert_allclose([got[5], got[6]], [want[5], want[6]], rtol=1e-6)
    a = load_file(resumed / "hf_adapter" / "adapter_model.safetensors")
    b = load_file(out / "hf_adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize(
    ("method", "change", "named"),
    [
        ("lora", ["adapter.rank=8"], "adapter.rank=16 -> 8"),
        ("dora", [], "adapter.method=lora -> dora"),
        ("none", [], "adapter.method=lora -> none"),
    ],
)
def test_resuming_with_another_adapter_is_refused_naming_the_keys(
    lora_run, tiny_model_dir, tmp_path, method, change, named
):
    out, _, _ = lora_run
    cfg = compose_config(
        [
            *RUN,
            *adapter_run(tiny_model_dir, method, *change),
            f"run.output_dir={tmp_path}",
            f"checkpoint.resume={step_dir(out / 'checkpoints', 4)}",
        ]
    )
    with pytest.raises(CheckpointError, match=named):
        checkpoint.check_resume(cfg)


def test_an_adapter_checkpoint_resumes_only_on_the_ranks_that_wrote_it(
    lora_run, tiny_model_dir, tmp_path
):
    out, _, _ = lora_run
    cfg = compose_config(
        [
            *RUN,
            *adapter_run(tiny_model_dir, "lora"),
            "cluster.num_workers=1",
            f"run.output_dir={tmp_path}",
            f"checkpoint.resume={step_dir(out / 'checkpoints', 4)}",
        ]
    )
    with pytest.raises(CheckpointError, match=r"of 2 ranks.*set cluster.num_workers=2"):
        checkpoint.check_resume(cfg)


# ------------------------------------------------------------------------------ no space


def _train_rank_short_of_space(rank, world, port, cfg, report: Path, inject: bool):
    """A training rank that reports a CheckpointError to `report/rank<N>`. `inject`: rank
    1's optimizer shard of step 4 fails part-written, as on a full disk."""
    real_save = torch.save

    def save_on_a_full_disk(obj, file, *args, **kwargs):
        if rank == 1 and str(file).endswith("optim_states.pt") and "step_00000004" in str(file):
            Path(file).write_bytes(b"part of a shard")
            raise OSError(errno.ENOSPC, "No space left on device", str(file))
        return real_save(obj, file, *args, **kwargs)

    if inject:
        torch.save = save_on_a_full_disk
    train_rank(rank, world, port, cfg, report, CheckpointError)


def assert_out_of_space_then_resumed(out: Path, root: Path, report: Path, straight: Path):
    """Both ranks stopped naming the failed save; step 2 stays, whole, and a rerun
    resumes from it to the straight run's losses and weights."""
    for rank in (0, 1):
        message = (report / f"rank{rank}").read_text()
        # An OSError's words, or (torch's writer says "unexpected pos ...") ours
        assert re.search("No space left on device|Not enough space", message), message
        assert f"checkpoint {step_dir(root, 4)} could not be written" in message
        assert f"the newest checkpoint is still {step_dir(root, 2)}" in message
        assert "needs about" in message and "free" in message
    assert [p.name for p in root.iterdir() if p.is_dir()] == [
        "step_00000002"
    ]  # the partial one removed
    assert damage(step_dir(root, 2)) is None
    run(out, out.parent / "cache", f"run.checkpoint_dir={root}")
    assert_same_run(out, straight, steps=[3, 4, 5, 6], rtol=1e-6)


def test_a_save_that_runs_out_of_space_keeps_the_previous_checkpoint(straight, tmp_path):
    out, report = tmp_path / "run", tmp_path
    cfg = compose_config([*RUN, f"run.output_dir={out}", f"run.cache_dir={tmp_path / 'cache'}"])
    cfg = prepare_run(cfg).cfg
    spawn(_train_rank_short_of_space, 2, cfg, report, True)
    assert_out_of_space_then_resumed(out, out / "checkpoints", report, straight / "run")


@pytest.fixture
def small_tmpfs(tmp_path, straight):
    """A tmpfs with room for one checkpoint of RUN and a half (root only)."""
    # The files the save wrote (other tests add a universal/ conversion beside them).
    marker = step_dir(straight / "run" / "checkpoints", 2) / COMMIT_MARKER
    size = sum(f["size"] for f in json.loads(marker.read_text())["files"].values())
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    made = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size * 3 // 2 // 4096 * 4096}", "tmpfs", mount],
        capture_output=True,
    )
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {made.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", mount], check=True)


def test_a_full_file_system_during_a_save_keeps_the_previous_checkpoint(
    straight, tmp_path, small_tmpfs
):
    out, root = tmp_path / "run", small_tmpfs / "checkpoints"
    cfg = compose_config(
        [*RUN, f"run.output_dir={out}", f"run.cache_dir={tmp_path / 'cache'}",
         f"run.checkpoint_dir={root}"]
    )  # fmt: skip
    cfg = prepare_run(cfg).cfg
    spawn(_train_rank_short_of_space, 2, cfg, tmp_path, False)
    subprocess.run(["mount", "-o", "remount,size=64m", small_tmpfs], check=True)
    assert_out_of_space_then_resumed(out, root, tmp_path, straight / "run")
