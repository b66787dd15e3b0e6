"""Hugging Face export: what is written reloads with exactly the exported weights (a
tampered weight or config is caught before it replaces anything), and a checkpoint of any
ZeRO stage written by 2 ranks exports, in one process, the weights the run itself exported."""

from __future__ import annotations

import errno
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from framework.config.commands import ExportConfig
from framework.config.schema import ConfigError
from framework.data.templates import stop_token_ids
from framework.hf import write
from framework.hf.checkpoint_export import export_checkpoint, export_model, find_checkpoint
from framework.hf.resolve import resolve_model
from framework.hf.write import (
    ExportError,
    holding,
    save_hf,
    verify_export,
    write_verified,
)
from framework.run.checkpoints import committed, step_dir
from framework.run.files import COMMIT_MARKER
from tests.helpers import ROOT, chat_prompt, run

WEIGHT = "model.layers.1.mlp.down_proj.weight"


def reference_of(model, shift: float = 0.0):
    """A reference holding copies of `model`'s weights (shifted by `shift`)."""
    state = {name: p.detach().clone() + shift for name, p in model.named_parameters()}
    return holding(model.config, state, model.generation_config, source="the test model")


def export_weights(directory: Path) -> dict[str, torch.Tensor]:
    files = sorted(directory.glob("*.safetensors"))
    assert files, f"no safetensors in {directory}"
    return {name: t for file in files for name, t in load_file(file).items()}


def bump(file: Path, name: str) -> None:
    """Change one element of one tensor in a safetensors file."""
    tensors = load_file(file)
    tensors[name][0, 0] += 1e-3
    save_file(tensors, file, metadata={"format": "pt"})


def export_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "launch/export.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


# ------------------------------------------------------------------------------ write + verify


def test_an_export_reloads_sharded_with_its_tokenizer_and_stop_tokens(
    tiny_model, tokenizer, tmp_path
):
    out = write_verified(
        reference_of(tiny_model), tokenizer, tmp_path / "hf", max_shard_size="100KB"
    )
    assert (out / "model.safetensors.index.json").exists()
    assert len(list(out.glob("*.safetensors"))) > 1
    written = export_weights(out)
    assert written.keys() == dict(tiny_model.named_parameters()).keys()
    for name, param in tiny_model.named_parameters():
        assert torch.equal(written[name], param.detach()), name
    generation = GenerationConfig.from_pretrained(out)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation.eos_token_id
    assert generation.pad_token_id == tokenizer.pad_token_id
    assert generation.use_cache  # training's cache-off setting is not exported
    assert AutoTokenizer.from_pretrained(out).chat_template == tokenizer.chat_template
    assert not (tmp_path / "hf.tmp").exists()


def test_a_tampered_weight_is_caught(tiny_model, tokenizer, tmp_path):
    reference = reference_of(tiny_model)
    save_hf(reference, tokenizer, tmp_path)
    bump(tmp_path / "model.safetensors", WEIGHT)
    with pytest.raises(ExportError, match=rf"{re.escape(str(tmp_path))}.*{WEIGHT} differs"):
        verify_export(tmp_path, reference, tokenizer)


def test_a_weight_missing_from_the_files_is_caught(tiny_model, tokenizer, tmp_path):
    """transformers fills a missing weight with random values and only warns."""
    reference = reference_of(tiny_model)
    save_hf(reference, tokenizer, tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors[WEIGHT]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ExportError, match=WEIGHT):
        verify_export(tmp_path, reference, tokenizer)


def test_a_config_that_changes_the_model_is_caught_by_its_logits(tiny_model, tokenizer, tmp_path):
    reference = reference_of(tiny_model)
    save_hf(reference, tokenizer, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rms_norm_eps"] = 0.5
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ExportError, match="logits differ"):
        verify_export(tmp_path, reference, tokenizer)


def test_a_rejected_export_leaves_the_previous_one_in_place(
    tiny_model, tokenizer, tmp_path, monkeypatch
):
    out = write_verified(reference_of(tiny_model), tokenizer, tmp_path / "hf")
    before = export_weights(out)

    def save_then_damage(model, tokenizer, directory, **kwargs):
        save_hf(model, tokenizer, directory, **kwargs)
        bump(directory / "model.safetensors", WEIGHT)

    monkeypatch.setattr(write, "save_hf", save_then_damage)
    with pytest.raises(ExportError, match=f"{WEIGHT} differs.*{re.escape(str(out))} was left"):
        write_verified(reference_of(tiny_model, shift=1.0), tokenizer, out)
    after = export_weights(out)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert (tmp_path / "hf.tmp" / "model.safetensors").exists()  # kept for inspection


def test_an_export_that_runs_out_of_space_leaves_the_previous_one_in_place(
    tiny_model, tokenizer, tmp_path, monkeypatch
):
    out = write_verified(reference_of(tiny_model), tokenizer, tmp_path / "hf")
    before = export_weights(out)

    def save_on_a_full_disk(model, tokenizer, directory, **kwargs):
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"part of the weights")
        raise OSError(errno.ENOSPC, "No space left on device", str(directory))

    monkeypatch.setattr(write, "save_hf", save_on_a_full_disk)
    with pytest.raises(ExportError) as failed:
        write_verified(reference_of(tiny_model, shift=1.0), tokenizer, out)
    assert f"the export to {out} could not be written ([Errno 28] No space left" in str(
        failed.value
    )
    assert f"{out} was left as it was" in str(failed.value) and "needs about" in str(failed.value)
    after = export_weights(out)
    assert all(torch.equal(after[name], before[name]) for name in before)
    assert not (tmp_path / "hf.tmp").exists()  # the partial files are gone


def test_weights_that_do_not_fit_the_config_are_refused(tiny_model):
    state = {name: p.detach().clone() for name, p in tiny_model.named_parameters()}
    config, generation = tiny_model.config, tiny_model.generation_config
    with pytest.raises(ExportError, match=rf"missing .*{WEIGHT}"):
        holding(config, {k: v for k, v in state.items() if k != WEIGHT}, generation, source="x")
    with pytest.raises(ExportError, match=r"unexpected .*lora"):
        holding(config, {**state, "lora.weight": torch.zeros(2)}, generation, source="x")
    with pytest.raises(ExportError, match="do not fit"):
        holding(config, {**state, WEIGHT: torch.zeros(3, 3)}, generation, source="x")


def test_replies_stop_at_the_end_of_turn_when_eos_is_another_token(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    base = AutoTokenizer.from_pretrained(tmp_path, eos_token="<|endoftext|>")
    assert stop_token_ids(base, 7) == [
        base.convert_tokens_to_ids("<|endoftext|>"),
        base.convert_tokens_to_ids("<|im_end|>"),
        7,
    ]


def test_launch_export_names_a_missing_or_incomplete_checkpoint(tmp_path):
    unfinished = step_dir(tmp_path / "checkpoints", 2)
    unfinished.mkdir(parents=True)
    for path, says in [
        (tmp_path / "nowhere", "no such file or directory"),
        (unfinished, f"no {COMMIT_MARKER} marker"),
    ]:
        result = export_cli(f"model={path}", f"out={tmp_path / 'out'}")
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and errors[0].startswith(f"error: model={path}"), result.stderr
        assert says in errors[0]
    with pytest.raises(ExportError, match="holds no committed checkpoint"):
        find_checkpoint(tmp_path / "checkpoints")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ real checkpoints


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module", params=["zero0", "zero2", "zero3"])
def trained(request, tmp_path_factory, cache):
    """A 2-rank run: checkpoints every 2 steps, then its own export in hf/. ZeRO-2 and
    ZeRO-3 are the session's runs (`straight`: 6 steps, `zero3_run`: 4 steps)."""
    if request.param == "zero2":
        return request.getfixturevalue("straight") / "run"
    if request.param == "zero3":
        return request.getfixturevalue("zero3_run") / "run"
    out = tmp_path_factory.mktemp(request.param) / "run"
    run(out, cache, f"parallelism={request.param}", "trainer.max_steps=4", "checkpoint.every=2")
    return out


def last_two_checkpoints(trained: Path) -> tuple[Path, Path]:
    """(the final checkpoint, the one before it) of a `trained` run."""
    *_, earlier, final = committed(trained / "checkpoints")
    return final, earlier


@pytest.mark.slow
def test_a_checkpoint_exports_the_weights_the_run_exported(trained, tmp_path):
    final, earlier = last_two_checkpoints(trained)
    out = export_checkpoint(final, tmp_path / "hf")
    got, want = export_weights(out), export_weights(trained / "hf")
    assert got.keys() == want.keys()
    for name in want:
        assert got[name].dtype == torch.float32
        assert torch.equal(got[name], want[name]), name
    # The earlier checkpoint holds other weights: the comparison above can fail.
    earlier = export_weights(export_checkpoint(earlier, tmp_path / "earlier"))
    assert not all(torch.equal(earlier[name], want[name]) for name in want)


@pytest.mark.slow
def test_the_export_chats_with_its_template(trained, tmp_path):
    out = export_checkpoint(last_two_checkpoints(trained)[0], tmp_path / "hf")
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    prompt = chat_prompt(tokenizer, "Reverse the words: one two three")
    assert tokenizer.decode(prompt["input_ids"][0]).endswith("<|im_start|>assistant\n")
    output = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    new = output[0, prompt["input_ids"].shape[1] :]
    assert 1 <= len(new) <= 5
    assert isinstance(tokenizer.decode(new), str)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["zero2"], indirect=True)  # one stage is enough here
def test_launch_export_takes_the_newest_checkpoint_of_a_run(trained, tmp_path):
    out = tmp_path / "exported"
    result = export_cli(f"model={trained / 'checkpoints'}", f"out={out}")
    assert result.returncode == 0, result.stderr
    assert f"done: {out} holds the model" in result.stdout
    assert last_two_checkpoints(trained)[0].name in result.stdout
    for name in ["model.safetensors", "config.json", "generation_config.json"]:
        assert (out / name).exists(), name
    assert "document_sdpa" not in (out / "config.json").read_text()  # loads without us
    assert AutoTokenizer.from_pretrained(out).chat_template
    got, want = export_weights(out), export_weights(trained / "hf")
    assert all(torch.equal(got[name], want[name]) for name in want)


@pytest.mark.slow
def test_a_damaged_or_incomplete_checkpoint_is_named(trained, tmp_path):
    source = last_two_checkpoints(trained)[0]
    shards = sorted(source.glob("*optim_states.pt")) or [source / "mp_rank_00_model_states.pt"]
    damaged = tmp_path / "damaged" / source.name
    shutil.copytree(source, damaged)
    (damaged / shards[0].name).write_bytes(shards[0].read_bytes()[:1000])
    with pytest.raises(ConfigError, match=f"{shards[0].name} cannot be loaded"):
        export_checkpoint(damaged, tmp_path / "out")
    if len(shards) > 1:  # ZeRO 1-3: one rank's shard lost
        incomplete = tmp_path / "incomplete" / source.name
        shutil.copytree(source, incomplete)
        (incomplete / shards[1].name).unlink()
        with pytest.raises(ExportError, match=f"{re.escape(str(incomplete))}.*cannot be read"):
            export_checkpoint(incomplete, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.parametrize("trained", ["zero2"], indirect=True)
def test_a_checkpoint_named_as_a_model_resolves_to_its_exported_weights(trained, tmp_path):
    cache = str(tmp_path / "cache")
    resolved = Path(resolve_model(str(trained / "checkpoints"), cache))
    assert resolved.parent == tmp_path / "cache" / "models"
    got, want = export_weights(resolved), export_weights(trained / "hf")
    assert all(torch.equal(got[name], want[name]) for name in want)
    assert resolve_model(str(last_two_checkpoints(trained)[0]), cache) == str(resolved)


def test_export_of_a_model_directory_writes_a_verified_copy(tmp_path, tiny_model, tokenizer):
    source = tmp_path / "source"
    tiny_model.save_pretrained(source)
    tokenizer.save_pretrained(source)
    out = export_model(ExportConfig(model=str(source), out=str(tmp_path / "copy")))
    got, want = export_weights(out), export_weights(source)
    assert got.keys() == want.keys()
    assert all(torch.equal(got[name], want[name]) for name in want)
