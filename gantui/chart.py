"""Line charts of metric histories as text (plotext), for any consumer: the dashboard's
plots and ``gantui compare`` both draw with :func:`plot_text`. No Textual here."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import plotext
from rich.text import Text

from gantui.history import Series

_AXIS_COLS = 8
"""Columns plotext spends on the y tick labels and frame (approximately)."""
_BACKGROUND = re.compile(r"\x1b\[48;[0-9;]*m")
"""plotext paints its vertical lines on a white background; the charts keep the terminal's."""


@dataclass(frozen=True)
class Line:
    """One series on a plot: what to call it, where its data lives, which 256-colour code."""

    label: str
    series: Series
    color: int


def x_extent(lines: list[Line], window: int | None = None) -> tuple[float, float] | None:
    """The steps a chart of ``lines`` spans (the last ``window`` points of each), None when
    they hold nothing."""
    spans = []
    for line in lines:
        steps = line.series.steps
        if len(steps):
            start = 0 if window is None else max(0, len(steps) - int(window))
            spans.append((float(steps[start]), float(steps[-1])))
    if not spans:
        return None
    return min(lo for lo, _ in spans), max(hi for _, hi in spans)


def plot_text(lines: list[Line], width: int, height: int, *, smoothing: float = 0.0,
              window: int | None = None, ylim: tuple[float, float] | None = None,
              envelope: bool = True, log: bool = False,
              marks: Sequence[tuple[float, int]] = (),
              xmap: Callable[[np.ndarray], np.ndarray] | None = None) -> Text:
    """Draw ``lines`` as a ``width`` x ``height`` plotext chart and return it as Rich text.

    Each series is bucketed to one bucket per column and drawn as two lines, through each
    bucket's minimum and through its maximum, so spikes stay visible (one line when every
    bucket holds a single value). Colours are 256-colour codes, which Rich downgrades further
    when the terminal has fewer.

    Args:
        envelope: the min/max band; without it, one line through the middle of each bucket
            (many runs on one chart, at half the cost).
        log: a log-scale y axis; values at or below zero are left out.
        marks: ``(step, colour)`` of each change to mark with a dotted vertical line (those
            outside the drawn steps are skipped).
        xmap: turns steps into the x axis's unit (wall time, say); the identity when None.
    """
    if width < 12 or height < 4:
        return Text("(too small)", style="dim")
    extent = x_extent(lines, window)
    if extent is None:
        return Text("waiting for metrics…", style="dim")
    n = max(4, width - _AXIS_COLS)
    plotext.terminal.limit(False, False)  # we size plots to widgets, not to the terminal
    fig = plotext.figure
    fig.clear()
    fig.plot_size(width, height)
    fig.theme("simple")
    drawn = 0
    for line in lines:
        buckets = line.series.buckets(n, window=window, smoothing=smoothing)
        x = buckets.x if xmap is None else xmap(buckets.x)
        edges = [buckets.hi] if np.array_equal(buckets.lo, buckets.hi) else [buckets.lo,
                                                                            buckets.hi]
        if not envelope:
            edges = [(buckets.lo + buckets.hi) / 2]
        for ys in edges:
            keep = ys > 0 if log else np.ones(len(ys), dtype=bool)
            if not keep.any():
                continue
            marker = plotext.marker("braille", plotext.pixel(foreground=line.color))
            signal = fig.signal(x[keep].tolist(), ys[keep].tolist(), marker=marker)
            signal.lines()
            fig.draw(signal)
            drawn += 1
    if not drawn:
        return Text("no values above zero to draw on a log scale", style="dim")
    lo, hi = extent if xmap is None else (float(v) for v in xmap(np.array(extent)))
    if hi > lo:
        fig.ruler("x").lim(lo, hi)
        for step, color in marks:
            at = step if xmap is None else float(xmap(np.array([step]))[0])
            if lo <= at <= hi:
                fig.line(at, orientation=1, pixel=plotext.pixel(foreground=color),
                         style="dotted")
    fig.legend(False)  # the legend lives in the panel title (see legend_markup)
    if log:
        fig.ruler("y").scale("log")
    elif ylim is not None:
        fig.ruler("y").lim(*ylim)
    text = _BACKGROUND.sub("", fig.build().string())
    return Text.from_ansi(text, no_wrap=True, end="")


