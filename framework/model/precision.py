"""What `precision: auto` (training) and `dtype: auto` (chat, eval, export) stand for on
this device: bf16 where it has bf16 units and they are faster, fp32 elsewhere.

GPUs answer from their capability. CPUs differ more: with AVX512-BF16 or AMX units bf16
matmuls run 2-2.5x faster than fp32 (AMD EPYC Zen 4, Intel Xeon Sapphire Rapids), without
them bf16 is emulated and 7-15x slower. So a CPU with the units is also timed once (a
fraction of a second): bf16 is chosen only where it is measured faster."""

from __future__ import annotations

import functools
import time

import torch

# bf16 must beat fp32 by this factor: a margin that timing noise does not cross, so a
# resumed run chooses as its first start did.
MIN_SPEEDUP = 1.2
_SIDE = 1024  # the timed matmul: [2048, 1024] x [1024, 1024]


def cpu_bf16_units() -> str | None:
    """The bf16 matmul units this CPU has, as torch detects them; None without."""
    if torch.cpu._is_amx_tile_supported():
        return "AMX"
    if torch.cpu._is_avx512_bf16_supported():
        return "AVX512-BF16"
    return None


def _seconds(dtype: torch.dtype, repeats: int = 5) -> float:
    a, b = torch.randn(2 * _SIDE, _SIDE, dtype=dtype), torch.randn(_SIDE, _SIDE, dtype=dtype)
    a @ b  # warm-up: kernel selection, caches
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return time.perf_counter() - start


@functools.cache
def bf16_speedup_on_cpu() -> float:
    """How many times faster a bf16 matmul runs than the fp32 one here."""
    return _seconds(torch.float32) / _seconds(torch.bfloat16)


def auto_precision(device: torch.device) -> tuple[str, str]:
    """(fp32 or bf16, the reason, for the start-up line)."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "this GPU has bf16 units"
        return "fp32", "this GPU has no bf16 units"
    units = cpu_bf16_units()
    if units is None:
        return "fp32", "this CPU has no bf16 units (AVX512-BF16, AMX): bf16 is 7-15x slower"
    speedup = bf16_speedup_on_cpu()
    verdict = f"this CPU has {units} units and a bf16 matmul ran {speedup:.1f}x as fast as fp32"
    return ("bf16" if speedup >= MIN_SPEEDUP else "fp32"), verdict


def float32_matmul_precision(device_type: str, precision: str) -> str:
    """torch.set_float32_matmul_precision for a run: "high" (TF32 tensor cores, a 10-bit
    mantissa, as cuBLAS and PyTorch's Lightning, TRL and torchtune advise) for an fp32
    run on a GPU, where full fp32 matmuls run at a fraction of the chip's speed; "highest"
    everywhere else, so CPU runs and every exactness test keep full fp32."""
    return "high" if device_type == "cuda" and precision == "fp32" else "highest"
