"""python benchmarks/serve.py [--quick]

launch/serve.py under a bounded load on 127.0.0.1, side by side: the default model
(SmolLM2-135M-Instruct, fp32 on this machine's CPU) served with continuous batching
(concurrent requests decoded together, the default) and one request at a time
(continuous_batching=false), each answering the same alpaca instructions through the
official `openai` client, several at once. Per setting: requests per second, reply
tokens per second, latency percentiles, requests refused or failed (none expected), and
how many greedy replies equal the other setting's.

    python benchmarks/serve.py            # about 4 minutes on 2 cores
"""

from __future__ import annotations

import json
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import openai
from common import arg_parser, bench_workdir, progress, table_header, write_results_page

from tests.helpers import SHARED_DATA
from tests.helpers.serving import served

NEW_TOKENS = 32
SETTINGS = {"continuous batching": "continuous_batching=true",
            "one at a time": "continuous_batching=false"}  # fmt: skip


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
                model="smollm2_135m", messages=[{"role": "user", "content": prompt}],
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


def percentile(values: list[float], share: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(share * 100) - 1]


def main() -> None:
    args = arg_parser(__doc__, "serve", "8 requests instead of 32").parse_args()
    count, concurrency = (8, 4) if args.quick else (32, 8)
    prompts = instructions(count)
    results = {}
    with bench_workdir("serve-"):
        for name, setting in SETTINGS.items():
            progress(f"{name}: {count} requests, {concurrency} at a time")
            with served("model=smollm2_135m", "device=cpu", "dtype=fp32", setting) as url:
                results[name] = load(url, prompts, concurrency)
    first, second = (results[name]["replies"] for name in SETTINGS)
    same = sum(a == b and a is not None for a, b in zip(first, second, strict=True))
    lines = [
        f"SmolLM2-135M-Instruct (`model=smollm2_135m device=cpu dtype=fp32`) on this "
        f"machine's CPU; {count} alpaca instructions, {concurrency} requests at a time, greedy, "
        f"at most {NEW_TOKENS} reply tokens each, through the `openai` client on 127.0.0.1 "
        "(after one warm-up request). Latency: from sending a request to its whole reply.",
        "",
        *table_header(
            "setting", "requests/s", "reply tokens/s", "latency p50 s", "p95 s", "p99 s", "failed"
        ),
    ]
    for name, found in results.items():
        latencies = found["latencies"]
        failed = sum(reply is None for reply in found["replies"])
        lines.append(
            f"| {name} | {count / found['wall']:.2f} | {found['tokens'] / found['wall']:.1f} | "
            f"{percentile(latencies, 0.5):.2f} | {percentile(latencies, 0.95):.2f} | "
            f"{percentile(latencies, 0.99):.2f} | {failed} of {count} |"
        )
    lines += ["", f"Greedy replies equal between the two settings: {same} of {count}."]
    write_results_page(args.out, "Serving: throughput and latency of launch/serve.py", lines)


if __name__ == "__main__":
    main()
