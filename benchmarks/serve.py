"""python benchmarks/serve.py [--quick] [--llama-cpp-python PYTHON]

launch/serve.py under a bounded load on 127.0.0.1, side by side: the default model
(SmolLM2-135M-Instruct, fp32 on this machine's CPU) served with continuous batching
(concurrent requests decoded together, the default), the same without the sampling steps
(sampling=false: greedy only), and one request at a time (continuous_batching=false), each
answering the same alpaca instructions through the official `openai` client, several at
once. Per setting: requests per second, reply tokens per second, latency percentiles,
requests refused or failed (none expected), and how many greedy replies equal those of
launch/serve.py's default.

With --llama-cpp-python (a Python that has `llama-cpp-python[server]`, a compiled
llama.cpp: not one of our dependencies), the same load also goes to llama.cpp's
OpenAI-compatible server on the model's GGUF export (launch/export.py format=gguf, q8_0
and f16): the CPU contender, and the export run in llama.cpp itself.

    python benchmarks/serve.py            # about 4 minutes on 2 cores (6 with llama.cpp)
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
from common import (
    arg_parser,
    bench_workdir,
    free_port,
    progress,
    table_header,
    write_results_page,
)
from transformers import AutoTokenizer

from framework.config.schema import DEFAULT_CACHE_DIR
from framework.hf.gguf_export import export_gguf
from framework.hf.resolve import resolve_model
from tests.helpers import SHARED_DATA
from tests.helpers.serving import served, wait_until_answering

MODEL = "smollm2_135m"
NEW_TOKENS = 32
SETTINGS = {
    "continuous batching": "continuous_batching=true",
    "continuous batching, sampling=false": "sampling=false",
    "one at a time": "continuous_batching=false",
}  # fmt: skip


def instructions(count: int) -> list[str]:
    records = json.loads((SHARED_DATA / "alpaca_en_demo.json").read_text())
    return [f"{r['instruction']}\n{r['input']}".strip() for r in records[:count]]


def load(url: str, prompts: list[str], concurrency: int) -> dict:
    """Every prompt sent once, `concurrency` at a time; each request's latency and reply."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=600)

    def ask(prompt: str) -> tuple[float, str | None, int]:
        began = time.perf_counter()
        try:
            reply = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": prompt}],
                max_tokens=NEW_TOKENS, temperature=0,
            )  # fmt: skip
        except openai.APIError:
            return time.perf_counter() - began, None, 0
        return (
            time.perf_counter() - began,
            reply.choices[0].message.content,
            reply.usage.completion_tokens,
        )

    ask(prompts[0])  # warm-up, not counted
    began = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        answers = list(pool.map(ask, prompts))
    wall = time.perf_counter() - began
    return {"wall": wall, "latencies": sorted(a[0] for a in answers),
            "replies": [a[1] for a in answers], "tokens": sum(a[2] for a in answers)}  # fmt: skip


def _shared_share(reference: str | None, reply: str | None) -> float:
    """The share of `reference` that `reply` repeats from its start."""
    if not reference or reply is None:
        return 0.0
    shared = 0
    while shared < min(len(reference), len(reply)) and reference[shared] == reply[shared]:
        shared += 1
    return shared / len(reference)


def _of(part: int | None, whole: int) -> str:
    return "-" if part is None else f"{part} of {whole}"


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


@contextlib.contextmanager
def llama_cpp_served(python: str, gguf: Path) -> Iterator[str]:
    """llama.cpp's OpenAI-compatible server (llama-cpp-python) on `gguf`, 127.0.0.1."""
    port = free_port()
    command = [python, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", "2048", "--n_threads", str(os.cpu_count()),
               "--model_alias", MODEL]  # fmt: skip
    with tempfile.TemporaryFile("w+") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_answering(process, output, f"{url}/v1/models", within=120)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=60)


def same_prompt_tokens(url: str, tokenizer, prompts: list[str]) -> int:
    """How many chats llama.cpp tokenizes (the GGUF file's vocabulary, merges and
    pre-tokenizer) into the ids the Hugging Face tokenizer gives."""
    same = 0
    for prompt in prompts:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = httpx.post(f"{url}/extras/tokenize", json={"input": text}, timeout=60).json()
        same += ids["tokens"] == tokenizer(text, add_special_tokens=False)["input_ids"]
    return same


def measured(args, prompts: list[str], concurrency: int, workdir: Path) -> dict[str, dict]:
    """Each setting's load, launch/serve.py's first (its replies are the reference)."""
    results = {}
    for name, setting in SETTINGS.items():
        progress(f"{name}: {len(prompts)} requests, {concurrency} at a time")
        with served(f"model={MODEL}", "device=cpu", "dtype=fp32", setting) as url:
            results[name] = load(url, prompts, concurrency)
    if args.llama_cpp_python is None:
        return results
    source = Path(resolve_model(MODEL, DEFAULT_CACHE_DIR))
    tokenizer = AutoTokenizer.from_pretrained(source)
    for gguf_type in ("q8_0", "f16"):
        name = f"llama.cpp, GGUF {gguf_type} (one at a time)"
        progress(name)
        gguf = workdir / f"smollm2-{gguf_type}.gguf"
        export_gguf(source, gguf, gguf_type)
        with llama_cpp_served(args.llama_cpp_python, gguf) as url:
            results[name] = load(url, prompts, concurrency)
            results[name]["same_tokens"] = same_prompt_tokens(url, tokenizer, prompts)
    return results


def main() -> None:
    parser = arg_parser(__doc__, "serve", "8 requests instead of 32")
    parser.add_argument("--llama-cpp-python", help="a Python with llama-cpp-python[server]")
    args = parser.parse_args()
    count, concurrency = (8, 4) if args.quick else (32, 8)
    prompts = instructions(count)
    with bench_workdir("serve-") as workdir:
        results = measured(args, prompts, concurrency, workdir)
    reference = results[next(iter(SETTINGS))]["replies"]
    lines = [
        f"SmolLM2-135M-Instruct (`model={MODEL}`; launch/serve.py with `device=cpu dtype=fp32`) "
        f"on this machine's CPU; {count} alpaca instructions, {concurrency} requests at a time, "
        f"greedy, at most {NEW_TOKENS} reply tokens each, through the `openai` client on "
        "127.0.0.1 (after one warm-up request). Latency: from sending a request to its whole "
        "reply. Same replies: greedy replies equal to launch/serve.py's default setting's; "
        "shared start: how much of each of those replies (in characters, averaged) a reply "
        "repeats before it first differs; same prompt tokens: chats llama.cpp tokenizes "
        "into the Hugging Face tokenizer's ids.",
        "",
        *table_header(
            "setting",
            "requests/s",
            "reply tokens/s",
            "latency p50 s",
            "p95 s",
            "p99 s",
            "failed",
            "same replies",
            "shared start",
            "same prompt tokens",
        ),
    ]
    for name, found in results.items():
        latencies, replies = found["latencies"], found["replies"]
        failed = sum(reply is None for reply in replies)
        pairs = list(zip(reference, replies, strict=True))
        same = sum(a == b and a is not None for a, b in pairs)
        shared = statistics.mean(_shared_share(a, b) for a, b in pairs)
        lines.append(
            f"| {name} | {count / found['wall']:.2f} | {found['tokens'] / found['wall']:.1f} | "
            f"{percentile(latencies, 0.5):.2f} | {percentile(latencies, 0.95):.2f} | "
            f"{percentile(latencies, 0.99):.2f} | {failed} of {count} | {same} of {count} | "
            f"{shared:.0%} | {_of(found.get('same_tokens'), count)} |"
        )
    write_results_page(args.out, "Serving: throughput and latency of launch/serve.py", lines)


if __name__ == "__main__":
    main()
