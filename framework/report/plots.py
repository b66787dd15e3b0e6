"""The report's plots: matplotlib figures drawn as inline SVG, so the page needs no
network and no script to show them. One function per kind of plot; several runs are
several series (or bars) of the same plot."""

from __future__ import annotations

import io
import math

import matplotlib
from matplotlib.figure import Figure

# Text stays text (searchable, small) and ids stay the same from one report to the next.
_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "report", "font.size": 9}
WIDTH = 6.4  # inches


def _svg(figure: Figure) -> str:
    buffer = io.StringIO()
    with matplotlib.rc_context(_STYLE):
        figure.savefig(buffer, format="svg")
    text = buffer.getvalue()
    return text[text.index("<svg") :]  # the XML prolog and doctype do not belong in HTML


def _figure(height: float = 3.0, *, fitted: bool = False) -> tuple[Figure, object]:
    """A figure with one plot. Margins are fixed (drawing once, twice as fast as a fitted
    layout) unless `fitted`: for labels of any length, such as family names."""
    with matplotlib.rc_context(_STYLE):
        figure = Figure(figsize=(WIDTH, height), layout="constrained" if fitted else None)
        if not fitted:
            figure.subplots_adjust(left=0.13, right=0.97, bottom=0.2, top=0.9)
        return figure, figure.add_subplot()


def lines(
    title: str, ylabel: str, series: list[tuple[str, list, list]], *, log_y: bool = False
) -> str:
    """One line per (label, steps, values); a single point is drawn as a marker. Every
    point is drawn: matplotlib's path simplification keeps a 100k-step line small
    (benchmarks/report.py)."""
    figure, axes = _figure()
    for label, xs, ys in series:
        axes.plot(xs, ys, label=label, marker="o" if len(xs) < 2 else None, markersize=3)
    if log_y and all(y > 0 for _, _, ys in series for y in ys):
        axes.set_yscale("log")
    else:  # values near 1 (rank skew) read as themselves, not as an offset
        axes.ticklabel_format(axis="y", useOffset=False)
    axes.set(title=title, xlabel="step", ylabel=ylabel)
    axes.grid(alpha=0.3)
    if len(series) > 1:
        axes.legend(fontsize=7)
    return _svg(figure)


def bars(title: str, ylabel: str, categories: list[str], groups: dict[str, list[float]]) -> str:
    """Grouped bars: one group per category, one bar per entry of `groups` (a run)."""
    figure, axes = _figure()
    width = 0.8 / max(len(groups), 1)
    for i, (label, values) in enumerate(groups.items()):
        positions = [c + (i - (len(groups) - 1) / 2) * width for c in range(len(categories))]
        axes.bar(positions, values, width, label=label)
    axes.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    axes.set(title=title, ylabel=ylabel)
    axes.grid(alpha=0.3, axis="y")
    if len(groups) > 1:
        axes.legend(fontsize=7)
    return _svg(figure)


def stacked_bars(title: str, ylabel: str, parts: dict[str, dict[str, float]]) -> str:
    """One bar per run (the keys of each part's dict), split into `parts`."""
    figure, axes = _figure()
    runs = list(next(iter(parts.values())))
    bottom = [0.0] * len(runs)
    for part, values in parts.items():
        heights = [values[run] for run in runs]
        axes.bar(runs, heights, bottom=bottom, label=part)
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.set(title=title, ylabel=ylabel)
    axes.legend(fontsize=7)
    return _svg(figure)


def heatmap(title: str, rows: list[str], columns: list[str], values: list[list[float]]) -> str:
    """`values[row][column]` in [0, 1] (NaN where missing), each cell written in."""
    figure, axes = _figure(1.0 + 0.22 * len(rows), fitted=True)
    image = axes.imshow(values, vmin=0.0, vmax=1.0, cmap="RdYlGn", aspect="auto")
    axes.set_xticks(range(len(columns)), columns)
    axes.set_yticks(range(len(rows)), rows, fontsize=7)
    for r, row in enumerate(values):
        for c, value in enumerate(row):
            if not math.isnan(value):
                axes.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=6)
    axes.set(title=title, xlabel="evaluation at step")
    figure.colorbar(image, ax=axes, fraction=0.05)
    return _svg(figure)
