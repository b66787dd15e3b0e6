"""A Hugging Face Llama-family model written as one GGUF file (llama.cpp's format, which
Ollama and llama.cpp run) with the gguf package's own writer, vocabulary and quantizers:
the hyper-parameters, the byte-level BPE tokenizer (tokens, their types, merges, special
ids, chat template) and the tensors in f32, f16, bf16 or Q8_0. Norms stay f32, and the
query and key projections are permuted to llama.cpp's rotary layout, as llama.cpp's own
converter writes them. Nothing is fetched at run time.

The file is verified by reading it back through transformers' GGUF loader (the one
framework/hf/gguf.py reads models with): the logits of a few prompts must be within the
type's tolerance of the Hugging Face model's. An Ollama Modelfile is written beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from gguf import MODEL_ARCH, GGMLQuantizationType, GGUFWriter, TensorNameMap, TokenType
from gguf.quants import quantize
from gguf.vocab import BpeVocab, SpecialVocab
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from framework.config.schema import ConfigError
from framework.hf.write import ExportError

GGUF_TYPES = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "bf16": GGMLQuantizationType.BF16,
    "q8_0": GGMLQuantizationType.Q8_0,
}
# llama.cpp's general.file_type for each (its LLAMA_FTYPE values).
_FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}
# Largest |logit difference| on reload, as a share of the largest |logit|, per type: f32
# is exact up to summation order; the others are their rounding's (bf16 keeps 8 bits of
# mantissa, Q8_0 8 bits a value with a scale per 32). SmolLM2-135M-Instruct measured
# f16 1.1e-3 and q8_0 2.3e-2 (benchmarks/gguf_export.py).
TOLERANCE = {"f32": 1e-5, "f16": 5e-3, "bf16": 3e-2, "q8_0": 5e-2}
_ARCHITECTURES = {"LlamaForCausalLM": MODEL_ARCH.LLAMA}


def export_gguf(hf_dir: Path, out: Path, tensor_type: str) -> float:
    """`hf_dir` (a Hugging Face Llama-family directory) written to `out` in `tensor_type`,
    verified on reload, with an Ollama Modelfile beside it; the reload's largest logit
    difference as a share of the largest logit."""
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    arch = _architecture(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    writer = GGUFWriter(partial, "llama")
    _hyperparameters(writer, model.config, tensor_type)
    _tokenizer(writer, hf_dir, model.config.vocab_size)
    _tensors(writer, model, arch, GGUF_TYPES[tensor_type])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    gap = logit_gap(model, hf_dir, partial)
    if gap > TOLERANCE[tensor_type]:
        partial.unlink()
        raise ExportError(
            f"{out}: read back through transformers, its logits are {gap:.2e} of the largest "
            f"apart from the model's, more than {tensor_type}'s {TOLERANCE[tensor_type]:.0e}; "
            "nothing was written"
        )
    partial.rename(out)
    out.with_name("Modelfile").write_text(modelfile(out))
    return gap


def _architecture(model: PreTrainedModel):
    name = model.config.architectures[0] if model.config.architectures else type(model).__name__
    if name not in _ARCHITECTURES:
        raise ConfigError(
            f"format=gguf writes {sorted(_ARCHITECTURES)} (the Llama family we train); this "
            f"model is {name}: export format=hf and convert it with llama.cpp"
        )
    return _ARCHITECTURES[name]


def _hyperparameters(writer: GGUFWriter, config, tensor_type: str) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)
    writer.add_file_type(_FILE_TYPES[tensor_type])


def _tokenizer(writer: GGUFWriter, hf_dir: Path, vocab_size: int) -> None:
    """The byte-level BPE vocabulary as gguf reads it, the tokens the Hugging Face
    tokenizer treats as special marked as control tokens (they never split), and merges,
    special ids and the chat template (gguf's SpecialVocab)."""
    try:
        vocab = BpeVocab(hf_dir)
    except FileNotFoundError:
        raise ConfigError(
            f"format=gguf writes byte-level BPE tokenizers; {hf_dir}'s is another kind: "
            "export format=hf and convert it with llama.cpp"
        ) from None
    tokens, types = [], []
    for text, _, kind in vocab.all_tokens():
        tokens.append(text)
        types.append(kind)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    for index, added in tokenizer.added_tokens_decoder.items():
        types[index] = TokenType.CONTROL if added.special else TokenType.USER_DEFINED
    padding = vocab_size - len(tokens)  # rows of the embedding no token uses
    tokens += [f"[PAD{i}]" for i in range(padding)]
    types += [TokenType.UNUSED] * padding
    writer.add_tokenizer_model("gpt2")
    # llama.cpp picks its pre-tokenizer by name; the name of a tokenizer it does not know
    # falls back to GPT-2's split, which byte-level BPE tokenizers start from.
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    SpecialVocab(hf_dir, load_merges=True, n_vocab=vocab_size).add_to_gguf(writer)


def _tensors(writer: GGUFWriter, model: PreTrainedModel, arch, qtype) -> None:
    config = model.config
    names = TensorNameMap(arch, config.num_hidden_layers)
    state = model.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # llama.cpp reuses the embedding
    for name, tensor in state.items():
        data = tensor.numpy()
        if name.endswith("q_proj.weight"):
            data = _rotary_layout(data, config.num_attention_heads, config.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            data = _rotary_layout(data, config.num_attention_heads, config.num_key_value_heads)
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"format=gguf: no GGUF name for the tensor {name}")
        kind = qtype if data.ndim == 2 else GGMLQuantizationType.F32  # norms stay f32
        writer.add_tensor(gguf_name, quantize(data, kind), raw_dtype=kind)


def _rotary_layout(weights: np.ndarray, heads: int, kv_heads: int) -> np.ndarray:
    """Each head's rows from Hugging Face's rotary halves to llama.cpp's interleaved pairs
    (transformers' GGUF loader undoes it: _reverse_permute_weights)."""
    heads = kv_heads if heads != kv_heads else heads
    shaped = weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:])
    return shaped.swapaxes(1, 2).reshape(weights.shape)


PROMPTS = ["The capital of France is", "def add(a, b):\n    return", "1, 2, 3, 4,"]


@torch.no_grad()
def logit_gap(model: PreTrainedModel, hf_dir: Path, gguf_file: Path) -> float:
    """Largest |logit difference| between `model` and `gguf_file` read back through
    transformers' GGUF loader, on PROMPTS, as a share of the largest |logit|."""
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    reloaded = AutoModelForCausalLM.from_pretrained(
        gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32
    ).eval()
    gap = 0.0
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        want, got = model(ids).logits, reloaded(ids).logits
        gap = max(gap, ((got - want).abs().max() / want.abs().max()).item())
    return gap


def modelfile(gguf_file: Path) -> str:
    """An Ollama Modelfile for `gguf_file` beside it: Ollama takes the chat template from the
    file's metadata (tokenizer.chat_template)."""
    return f"FROM ./{gguf_file.name}\n"
