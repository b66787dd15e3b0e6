"""The report's parts that are rules of their own: how figures are written and which
evaluations a heat map keeps (framework/report/sections.py)."""

import itertools

import pytest

from framework.report.sections import number, spread


@pytest.mark.parametrize(
    ("value", "shown"),
    [(0.861234, "0.8612"), (7.0, "7"), (1234.0, "1,234"), (5675.12, "5675"), (6, "6"),
     (None, ""), (1e-05, "1e-05")],
)  # fmt: skip
def test_figures_show_four_significant_digits_and_whole_counts_with_separators(value, shown):
    assert number(value) == shown


def test_a_heat_map_keeps_evenly_spread_evaluations_with_the_first_and_the_last():
    steps = list(range(0, 2001, 50))  # 41 evaluations
    kept = spread(steps, 12)
    assert len(kept) == 12 and kept[0] == 0 and kept[-1] == 2000
    assert kept == sorted(set(kept))
    gaps = {b - a for a, b in itertools.pairwise(kept)}
    assert gaps <= {150, 200}  # 2000 / 11 = 182 steps apart, on the 50-step grid
    assert spread(steps[:5], 12) == steps[:5]
