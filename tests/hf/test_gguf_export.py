"""GGUF export (launch/export.py format=gguf): a Llama-family model written as one GGUF
file comes back, through the resolver's own GGUF reading (framework/hf/gguf.py: the
model=<file>.gguf path of every command), with the model's logits within its type's
tolerance and the same tokens for the same chat; bad requests are one line each."""

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel

from framework.commands.compose import export_config
from framework.config.commands import ExportConfig
from framework.config.schema import ConfigError
from framework.hf.checkpoint_export import export_model
from framework.hf.gguf import cached_hf_dir
from framework.hf.gguf_export import PROMPTS, TOLERANCE, export_gguf

CHAT = [{"role": "user", "content": "What is 2 plus 3?"}]


@torch.no_grad()
def _logits(directory, tokenizer) -> list[torch.Tensor]:
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    return [model(tokenizer(p, return_tensors="pt").input_ids).logits for p in PROMPTS]


@pytest.mark.parametrize("gguf_type", ["f32", "f16", "bf16", "q8_0"])
def test_an_exported_gguf_comes_back_with_the_models_logits(tiny_model_dir, tmp_path, gguf_type):
    out = tmp_path / "export" / "tiny.gguf"
    cfg = ExportConfig(model=str(tiny_model_dir), out=str(out), format="gguf", gguf_type=gguf_type)
    assert export_model(cfg) == out

    assert out.with_name("Modelfile").read_text() == "FROM ./tiny.gguf\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["Modelfile", "tiny.gguf"]
    back = cached_hf_dir(out, str(tmp_path / "cache"))
    tokenizer, returned = (
        AutoTokenizer.from_pretrained(tiny_model_dir),
        AutoTokenizer.from_pretrained(back),
    )
    chat = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    assert returned.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False) == chat
    assert returned(chat).input_ids == tokenizer(chat).input_ids
    bound = 1e-6 if gguf_type == "f32" else TOLERANCE[gguf_type]
    for want, got in zip(_logits(tiny_model_dir, tokenizer), _logits(back, tokenizer), strict=True):
        assert (got - want).abs().max() <= bound * want.abs().max()


def test_a_model_outside_the_llama_family_is_refused_with_the_way_out(tmp_path):
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2)).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(ConfigError, match=r"format=gguf writes \['LlamaForCausalLM'\].*GPT2"):
        export_gguf(tmp_path / "gpt2", tmp_path / "x.gguf", "f16")
    assert not (tmp_path / "x.gguf").exists()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"format": "onnx"}, "format='onnx' is not one of ['hf', 'gguf']"),
        ({"format": "gguf", "gguf_type": "q4_k"}, "gguf_type='q4_k' is not one of"),
        ({"format": "gguf", "out": "model"}, "out='model': format=gguf writes a file"),
    ],
)
def test_bad_export_requests_are_one_line(fields, message):
    raw = OmegaConf.structured(ExportConfig(model="m", out="m.gguf"))
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        export_config(OmegaConf.merge(raw, fields))
