"""Line charts of metric histories as text (plotext), for any consumer: the dashboard's
plots and ``gantui compare`` both draw with :func:`plot_text`. No Textual here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import plotext
from rich.text import Text

from gantui.history import Series

_AXIS_COLS = 8
"""Columns plotext spends on the y tick labels and frame (approximately)."""


@dataclass(frozen=True)
class Line:
    """One series on a plot: what to call it, where its data lives, which 256-colour code."""

    label: str
    series: Series
    color: int


def plot_text(lines: list[Line], width: int, height: int, *, smoothing: float = 0.0,
              window: int | None = None, ylim: tuple[float, float] | None = None,
              envelope: bool = True) -> Text:
    """Draw ``lines`` as a ``width`` x ``height`` plotext chart and return it as Rich text.

    Each series is bucketed to one bucket per column and drawn as two lines, through each
    bucket's minimum and through its maximum, so spikes stay visible (one line when every
    bucket holds a single value). Colours are 256-colour codes, which Rich downgrades further
    when the terminal has fewer. Without ``envelope``, one line through the middle of each
    bucket: many runs on one chart, at half the cost.
    """
    if width < 12 or height < 4:
        return Text("(too small)", style="dim")
    if not any(len(line.series) for line in lines):
        return Text("waiting for metrics…", style="dim")
    n = max(4, width - _AXIS_COLS)
    plotext.terminal.limit(False, False)  # we size plots to widgets, not to the terminal
    fig = plotext.figure
    fig.clear()
    fig.plot_size(width, height)
    fig.theme("simple")
    for line in lines:
        buckets = line.series.buckets(n, window=window, smoothing=smoothing)
        xs = buckets.x.tolist()
        edges = [buckets.hi] if np.array_equal(buckets.lo, buckets.hi) else [buckets.lo,
                                                                            buckets.hi]
        if not envelope:
            edges = [(buckets.lo + buckets.hi) / 2]
        for ys in edges:
            marker = plotext.marker("braille", plotext.pixel(foreground=line.color))
            signal = fig.signal(xs, ys.tolist(), marker=marker)
            signal.lines()
            fig.draw(signal)
    fig.legend(False)  # the legend lives in the panel title (see legend_markup)
    if ylim is not None:
        fig.ruler("y").lim(*ylim)
    return Text.from_ansi(fig.build().string(), no_wrap=True, end="")


