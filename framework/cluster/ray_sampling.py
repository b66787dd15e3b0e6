"""Sampled answers from Ray workers (launch/improve.py): the chats dealt out to
`workers` Ray tasks, each loading the model once and sampling every answer of its chats.
Deterministic for the same seed and number of workers."""

from __future__ import annotations

import math
import os

import ray
import torch

from framework.config.commands import ChatConfig
from framework.eval.generate import Message, generate_replies
from framework.hf.local import load_for_inference


@ray.remote
def _sample_shard(
    model: str, chats: list[list[Message]], settings: dict, cache_dir: str, seed: int, device: str
) -> list[list[str]]:
    threads = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    torch.set_num_threads(max(1, threads))
    torch.manual_seed(seed)
    config = ChatConfig(model=model, cache_dir=cache_dir, device=device)
    loaded, tokenizer = load_for_inference(config)
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


def task_placement(*, workers: int, cpus_per_worker: int, cluster_gpus: float) -> tuple[dict, str]:
    """(Ray options for each sampling task, the device it loads the model on). On a cluster
    with GPUs each task reserves a GPU, or an equal share when there are more tasks than
    GPUs, so Ray narrows CUDA_VISIBLE_DEVICES to it and "cuda" inside the task is its own
    GPU. A task that reserves none stays on the CPU: Ray leaves CUDA_VISIBLE_DEVICES alone
    for it, and every such task would share the node's first GPU unreserved."""
    if cluster_gpus < 1:
        return {"num_cpus": cpus_per_worker, "num_gpus": 0}, "cpu"
    share = 1 if workers <= cluster_gpus else 1 / math.ceil(workers / int(cluster_gpus))
    return {"num_cpus": cpus_per_worker, "num_gpus": share}, "cuda"


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
    CPUs each (and a GPU each where the cluster has GPUs: task_placement), on the cluster
    at `address` (None: RAY_ADDRESS, else a private local Ray, shut down afterwards)."""
    started = not ray.is_initialized()
    if started:
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "local", log_to_driver=False)
    try:
        shards = [list(range(w, len(chats), workers)) for w in range(workers)]
        options, device = task_placement(
            workers=workers,
            cpus_per_worker=cpus_per_worker,
            cluster_gpus=ray.cluster_resources().get("GPU", 0),
        )
        task = _sample_shard.options(**options)
        pending = [
            task.remote(model, [chats[i] for i in shard], settings, cache_dir, seed + w, device)
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
