"""Step metrics: time split, throughput of real (never padding) tokens, packing efficiency,
MFU and peak memory, gathered from every rank and summarised on all of them."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Dense bf16 peak of common training GPUs, TFLOP/s; trainer.peak_tflops overrides.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
}

_FIELDS = (
    "tokens",
    "trained_tokens",
    "slots",
    "sum_sq_lengths",
    "data_wait_s",
    "compute_s",
    "optimizer_s",
    "step_time_s",
    "peak_memory_gb",
)


def clock(device: torch.device) -> float:
    """Wall time after the device has finished its queued work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def peak_memory_gb(device: torch.device) -> float:
    """GPU memory allocated at peak, or the process's peak resident memory on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((t * 1e12 for key, t in PEAK_TFLOPS.items() if key in name), None)


@dataclass
class ModelShape:
    params: int
    layers: int
    hidden: int

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelShape:
        # Under ZeRO-3 a parameter tensor is a placeholder; ds_numel is its real size.
        params = sum(getattr(p, "ds_numel", p.numel()) for p in model.parameters())
        return cls(params, model.config.num_hidden_layers, model.config.hidden_size)

    def train_flops(self, tokens: float, sum_sq_lengths: float) -> float:
        """Forward + backward: 6 per parameter per token for the matrix products, plus
        causal attention over each example's own length (6 x layers x hidden x len^2)."""
        return 6 * self.params * tokens + 6 * self.layers * self.hidden * sum_sq_lengths


def gather(local: dict[str, float], device: torch.device) -> list[dict[str, float]]:
    """Every rank's record, on every rank."""
    mine = torch.tensor([local[f] for f in _FIELDS], dtype=torch.float64, device=device)
    everyone = [torch.zeros_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    return [dict(zip(_FIELDS, t.tolist(), strict=True)) for t in everyone]


def summarize(ranks: list[dict[str, float]], shape: ModelShape | None, peak: float | None) -> dict:
    """The step as the job saw it: throughput over the slowest rank's step time."""
    step = max(r["step_time_s"] for r in ranks)
    total = {
        f: sum(r[f] for r in ranks) for f in ("tokens", "trained_tokens", "slots", "sum_sq_lengths")
    }
    metrics = {
        "tokens": total["tokens"],
        "trained_tokens": total["trained_tokens"],
        "tokens_per_s": total["tokens"] / step,
        "trained_tokens_per_s": total["trained_tokens"] / step,
        "tokens_per_s_per_worker": total["tokens"] / step / len(ranks),
        "packing_efficiency": total["tokens"] / max(total["slots"], 1),
        "step_time_s": step,
        "data_wait_s": max(r["data_wait_s"] for r in ranks),
        "compute_s": max(r["compute_s"] for r in ranks),
        "optimizer_s": max(r["optimizer_s"] for r in ranks),
        "step_time_skew": step / max(min(r["step_time_s"] for r in ranks), 1e-9),
        "peak_memory_gb": max(r["peak_memory_gb"] for r in ranks),
    }
    if shape is not None and peak is not None:
        flops = shape.train_flops(total["tokens"], total["sum_sq_lengths"])
        metrics["mfu"] = flops / step / (peak * len(ranks))
    return metrics
