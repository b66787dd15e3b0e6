"""What `auto` precision picks (framework/model/precision.py). CPUs without bf16 units or
with slow ones are stood in for: this machine has the units."""

import pytest
import torch

from framework.model import precision
from framework.model.precision import (
    auto_precision,
    bf16_speedup_on_cpu,
    cpu_bf16_units,
    float32_matmul_precision,
)

CPU = torch.device("cpu")


def test_a_cpu_without_bf16_units_trains_in_fp32(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: None)
    choice, reason = auto_precision(CPU)
    assert choice == "fp32" and "no bf16 units" in reason


@pytest.mark.parametrize(("speedup", "expected"), [(2.4, "bf16"), (1.05, "fp32")])
def test_a_cpu_with_bf16_units_uses_them_only_where_measured_faster(monkeypatch, speedup, expected):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: "AMX")
    monkeypatch.setattr(precision, "bf16_speedup_on_cpu", lambda: speedup)
    choice, reason = auto_precision(CPU)
    assert choice == expected and f"{speedup:.1f}x" in reason and "AMX" in reason


def test_this_cpu_is_judged_by_what_torch_detects_and_a_real_timing():
    choice, reason = auto_precision(CPU)
    units = cpu_bf16_units()
    assert (units is None) == ("no bf16 units" in reason)
    if units is not None:
        speedup = bf16_speedup_on_cpu()
        assert speedup > 0 and (choice == "bf16") == (speedup >= precision.MIN_SPEEDUP)
    print(f"auto precision here: {choice} ({reason})")


def test_tf32_only_for_fp32_runs_on_gpus():
    assert float32_matmul_precision("cuda", "fp32") == "high"
    assert float32_matmul_precision("cuda", "bf16") == "highest"
    assert float32_matmul_precision("cpu", "fp32") == "highest"
