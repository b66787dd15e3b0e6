"""python benchmarks/gguf_export.py [--quick]

The GGUF round trip of the default model, SmolLM2-135M-Instruct, side by side for each
type launch/export.py format=gguf writes (f32, f16, bf16, q8_0): the file's size, the
export's time (writing, then the verifying reload), the largest logit difference the
reload gave on the export's prompts (as a share of the largest logit), and how many of
a few chats get the same greedy reply from the file, read back through transformers' GGUF
loader, as from the Hugging Face model.

    python benchmarks/gguf_export.py            # about 3 minutes on 2 cores
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from common import arg_parser, bench_workdir, progress, table_header, write_results_page
from transformers import AutoModelForCausalLM, AutoTokenizer

from framework.hf.gguf_export import GGUF_TYPES, export_gguf
from framework.hf.resolve import resolve_model

CHATS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give me three tips for a job interview.",
    "Add 17 and 25.",
    "Translate 'good morning' into Spanish.",
]
NEW_TOKENS = 32


@torch.no_grad()
def greedy_replies(model, tokenizer) -> list[list[int]]:
    replies = []
    for chat in CHATS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": chat}], add_generation_prompt=True, return_tensors="pt"
        )
        ids = ids["input_ids"] if hasattr(ids, "keys") else ids
        out = model.generate(ids, max_new_tokens=NEW_TOKENS, do_sample=False)
        replies.append(out[0, ids.shape[1] :].tolist())
    return replies


def main() -> None:
    args = arg_parser(__doc__, "gguf_export", "q8_0 only").parse_args()
    types = ["q8_0"] if args.quick else list(GGUF_TYPES)
    with bench_workdir("gguf-export-") as workdir:
        source = Path(resolve_model("smollm2_135m", str(workdir / "cache")))
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32).eval()
        reference = greedy_replies(model, tokenizer)
        rows = []
        for gguf_type in types:
            progress(gguf_type)
            out = workdir / gguf_type / "smollm2.gguf"
            began = time.perf_counter()
            gap = export_gguf(source, out, gguf_type)
            seconds = time.perf_counter() - began
            reloaded = AutoModelForCausalLM.from_pretrained(
                out.parent, gguf_file=out.name, dtype=torch.float32
            ).eval()
            replies = greedy_replies(reloaded, tokenizer)
            same = sum(a == b for a, b in zip(reference, replies, strict=True))
            rows.append((gguf_type, out.stat().st_size / 2**20, seconds, gap, same))
    lines = [
        f"SmolLM2-135M-Instruct (the `smollm2_135m` preset, fp32), exported with "
        f"`export_gguf`; greedy replies of {NEW_TOKENS} new tokens to {len(CHATS)} chats, "
        "the file read back through transformers' GGUF loader.",
        "",
        *table_header(
            "type", "file MiB", "export s (with its check)", "largest logit gap", "same replies"
        ),
    ]
    for gguf_type, mib, seconds, gap, same in rows:
        lines.append(
            f"| {gguf_type} | {mib:.1f} | {seconds:.1f} | {gap:.1e} | {same} of {len(CHATS)} |"
        )
    write_results_page(args.out, "GGUF export: the round trip of the default model", lines)


if __name__ == "__main__":
    main()
