"""Step metrics: time split, throughput of real (never padding) tokens, packing efficiency,
MFU and peak memory, gathered from every rank and summarised on all of them."""

from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

# Dense peaks of common training GPUs, TFLOP/s: (bf16, TF32, fp32) from NVIDIA's data
# sheets; trainer.peak_tflops overrides. The first name that the device's name contains
# wins, so variants come before their family ("NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_TFLOPS = {
    "H100 PCIe": (756.0, 378.0, 51.2),
    "H100 NVL": (835.0, 418.0, 60.0),
    "H200 NVL": (835.0, 418.0, 60.0),
    "H200": (989.0, 495.0, 66.9),
    "H100": (989.0, 495.0, 66.9),
    "A100": (312.0, 156.0, 19.5),
    "L40S": (362.0, 183.0, 91.6),
    "L40": (181.0, 90.5, 90.5),
    "A10G": (125.0, 62.5, 31.2),  # A10's sheet
    "L4": (121.0, 60.0, 30.3),
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


def peak_tflops(name: str, precision: str, tf32: bool) -> float | None:
    """The dense peak of the GPU called `name` for the matrix products of a `precision`
    run: bf16 tensor cores, else TF32 where fp32 products may use it, else plain fp32."""
    column = 0 if precision == "bf16" else 1 if tf32 else 2
    return next((peaks[column] for key, peaks in PEAK_TFLOPS.items() if key in name), None)


def peak_flops(
    device: torch.device, override_tflops: float | None, precision: str = "bf16"
) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    tf32 = torch.backends.cuda.matmul.allow_tf32
    tflops = peak_tflops(torch.cuda.get_device_name(device), precision, tf32)
    return tflops * 1e12 if tflops else None


def _numel(param: torch.Tensor) -> int:
    # A 4-bit weight is packed (bitsandbytes: two per byte, in quant_storage's dtype);
    # its quant_state keeps the real shape. Under ZeRO-3 a tensor is a placeholder and
    # ds_numel is its size.
    shape = getattr(getattr(param, "quant_state", None), "shape", None)
    if shape is not None:
        return math.prod(shape)
    return getattr(param, "ds_numel", param.numel())


@dataclass
class ModelShape:
    """What the matrix products of a step cost: weights that train, frozen weights (LoRA's
    base), and the attention's width and depth."""

    params: int
    layers: int
    hidden: int
    frozen: int = 0

    @classmethod
    def of(cls, model: torch.nn.Module) -> ModelShape:
        # The input embedding is a lookup, not a product: counted only when tied to the
        # output layer, which is one.
        embedding = model.get_input_embeddings().weight
        tied = embedding is getattr(model.get_output_embeddings(), "weight", None)
        trained = frozen = 0
        for param in model.parameters():
            if param is embedding and not tied:
                continue
            if param.requires_grad:
                trained += _numel(param)
            else:
                frozen += _numel(param)
        config = model.config
        heads = config.num_attention_heads
        width = heads * (getattr(config, "head_dim", None) or config.hidden_size // heads)
        return cls(trained, config.num_hidden_layers, width, frozen)

    def train_flops(self, tokens: float, sum_sq_lengths: float) -> float:
        """Model FLOPs of forward + backward over `tokens` real tokens (padding is waste,
        not work; gradient checkpointing's recompute is not counted: MFU, not HFU). A
        trained weight costs 6 per token (forward, input and weight gradients), a frozen
        one 4 (no weight gradient); causal attention over each example's own length costs
        6 x layers x width x len^2 (PaLM's 12 per query-key pair, halved by the mask)."""
        weights = (6 * self.params + 4 * self.frozen) * tokens
        return weights + 6 * self.layers * self.hidden * sum_sq_lengths


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
