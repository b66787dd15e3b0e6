import pytest
import torch

from framework.train.metrics import ModelShape, peak_flops, peak_memory_gb, summarize


def _rank(tokens, slots, step, **extra):
    record = {
        "tokens": tokens,
        "trained_tokens": tokens / 2,
        "slots": slots,
        "sum_sq_lengths": 10 * tokens,
        "data_wait_s": 0.1,
        "compute_s": step - 0.3,
        "optimizer_s": 0.2,
        "step_time_s": step,
        "peak_memory_gb": 1.0,
    }
    return record | extra


def test_throughput_counts_real_tokens_over_the_slowest_rank():
    ranks = [_rank(900, 1000, 2.0), _rank(700, 1000, 1.6, peak_memory_gb=3.0)]
    m = summarize(ranks, None, None)
    assert m["tokens_per_s"] == pytest.approx(1600 / 2.0)
    assert m["trained_tokens_per_s"] == pytest.approx(800 / 2.0)
    assert m["tokens_per_s_per_worker"] == pytest.approx(400)
    assert m["packing_efficiency"] == pytest.approx(0.8)
    assert m["step_time_skew"] == pytest.approx(2.0 / 1.6)
    assert m["peak_memory_gb"] == 3.0
    assert "mfu" not in m


def test_mfu_uses_model_and_attention_flops_against_the_peak():
    shape = ModelShape(params=1000, layers=2, hidden=8)
    m = summarize([_rank(100, 100, 1.0)], shape, peak=1e7)
    expected = (6 * 1000 * 100 + 6 * 2 * 8 * 1000) / 1.0 / 1e7
    assert m["mfu"] == pytest.approx(expected)


def test_cpu_has_no_peak_unless_configured_and_memory_is_measured():
    assert peak_flops(torch.device("cpu"), None) is None
    assert peak_flops(torch.device("cpu"), 2.0) == 2e12
    assert peak_memory_gb(torch.device("cpu")) > 0.01
