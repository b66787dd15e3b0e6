"""Sampled answers from Ray workers (launch/improve.py): the chats dealt out to
`workers` Ray tasks, each loading the model once and sampling every answer of its chats.
Deterministic for the same seed and number of workers."""

from __future__ import annotations

import os

import ray
import torch

from framework.config.commands import ChatConfig
from framework.eval.generate import Message, generate_replies
from framework.model.local import load_for_inference


@ray.remote
def _sample_shard(
    model: str, chats: list[list[Message]], settings: dict, cache_dir: str, seed: int
) -> list[list[str]]:
    threads = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    loaded, tokenizer = load_for_inference(ChatConfig(model=model, cache_dir=cache_dir))
    count = settings["samples"]
    replies = generate_replies(
        loaded,
        tokenizer,
        [chat for chat in chats for _ in range(count)],
        max_new_tokens=settings["max_new_tokens"],
        batch_size=settings["batch_size"],
        temperature=settings["temperature"],
        top_p=settings["top_p"],
    )
    return [replies[i : i + count] for i in range(0, len(replies), count)]


def sample_answers(
    model: str,
    chats: list[list[Message]],
    *,
    workers: int,
    cpus_per_worker: int,
    address: str | None,
    cache_dir: str,
    seed: int,
    **settings,
) -> list[list[str]]:
    """`settings["samples"]` answers to each chat (in chat order), sampled at
    `settings["temperature"]` within `top_p`, on `workers` Ray tasks of `cpus_per_worker`
    CPUs each, on the cluster at `address` (None: RAY_ADDRESS, else a private local Ray,
    shut down afterwards)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=False)
    try:
        shards = [list(range(w, len(chats), workers)) for w in range(workers)]
        task = _sample_shard.options(num_cpus=cpus_per_worker)
        pending = [
            task.remote(model, [chats[i] for i in shard], settings, cache_dir, seed + w)
            for w, shard in enumerate(shards)
            if shard
        ]
        answers: dict[int, list[str]] = {}
        for shard, found in zip((s for s in shards if s), ray.get(pending), strict=True):
            answers |= dict(zip(shard, found, strict=True))
    finally:
        if started:
            ray.shutdown()
    return [answers[i] for i in range(len(chats))]
