"""GGUF files as a model source: converted once into the cache, reused, and equal to what
transformers' own GGUF loading gives."""

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from framework.config.schema import ConfigError
from framework.hf.gguf import cached_hf_dir, check_gguf, file_sha256
from framework.hf.resolve import PACKAGED, packaged_file
from tests.helpers import chat_prompt


def write_gguf(path, architecture, tensor, dtype=None):
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", tensor, raw_dtype=dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_an_unsupported_architecture_is_named_before_any_weight_is_read(tmp_path):
    with pytest.raises(ConfigError, match=r"odd.gguf: GGUF architecture 'mamba9' is not"):
        check_gguf(write_gguf(tmp_path / "odd.gguf", "mamba9", np.zeros((4, 4), np.float32)))


def test_an_unsupported_tensor_type_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"tensor types \['I8'\] cannot be dequantized"):
        tensor, i8 = np.zeros((4, 4), np.int8), gguf.GGMLQuantizationType.I8
        check_gguf(write_gguf(tmp_path / "q.gguf", "llama", tensor, i8))


def test_a_file_that_is_not_gguf_is_named(tmp_path):
    (tmp_path / "model.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match="not a readable GGUF file"):
        check_gguf(tmp_path / "model.gguf")


@pytest.mark.slow
def test_the_converted_model_gives_the_gguf_loaded_models_logits(real_model_cache):
    converted = real_model_cache[1]
    file = packaged_file("smollm2_135m", PACKAGED["smollm2_135m"])
    assert converted.parent.name == "models" and converted.name.endswith(file_sha256(file)[:20])
    direct = AutoModelForCausalLM.from_pretrained(
        file.parent, gguf_file=file.name, dtype=torch.float32
    ).eval()
    reloaded = AutoModelForCausalLM.from_pretrained(converted, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(converted)
    ids = chat_prompt(tokenizer, "What is the capital of France?")["input_ids"]
    with torch.no_grad():
        assert torch.equal(direct(ids).logits, reloaded(ids).logits)
    assert "SmolLM" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False
    )


@pytest.mark.slow
def test_a_second_conversion_reuses_the_cached_directory(real_model_cache, monkeypatch):
    cache, converted = real_model_cache
    stamp = (converted / "model.safetensors").stat().st_mtime_ns

    def no_conversion(*args):
        raise AssertionError("converted again")

    monkeypatch.setattr("framework.hf.gguf._convert", no_conversion)
    file = packaged_file("smollm2_135m", PACKAGED["smollm2_135m"])
    assert cached_hf_dir(file, cache) == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(converted.parent.glob(".converting-*"))  # no staging left behind
