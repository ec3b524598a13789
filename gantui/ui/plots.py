"""Charts: metric line plots (plotext) and gradient-norm sparklines.

Every chart draws from :class:`~gantui.history.Buckets`, so a redraw costs in proportion to
the chart's width whatever the history's length. Charts cache their last rendering and
redraw only when the data version, the size or a view setting changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
from rich.color import Color
from rich.text import Text
from textual.events import Click
from textual.markup import escape
from textual.message import Message
from textual.widget import Widget

from gantui.chart import Line, plot_text, x_extent
from gantui.history import Buckets, Series
from gantui.text import safe
from gantui.ui.model import Mark


def legend_markup(lines: list[Line]) -> str:
    """Content markup naming each line in its colour, for a panel title."""
    parts = []
    for line in lines:
        hexcolor = Color.from_ansi(line.color).get_truecolor().hex
        parts.append(f"[{hexcolor}]━ {escape(safe(line.label))}[/]")
    return " ".join(parts)


MARK_COLORS = {"set": 51, "pause": 220, "resume": 220, "restart": 213, "checkpoint": 35,
               "warning": 196}
"""Colour (ANSI 256) of each kind of change marked on the charts."""
MARK_NEAR_COLS = 2
"""A click lists the changes drawn within this many columns of it."""


MARK_PRIORITY = ("warning", "restart", "pause", "resume", "set", "checkpoint")
"""Which change a column shows when several fall in it (the first kind listed wins)."""


def drawn_marks(marks: list[Mark], extent: tuple[float, float] | None, width: int
                ) -> list[tuple[float, int]]:
    """``(step, colour)`` of the changes a chart ``width`` columns wide draws over the steps
    ``extent``: one per column (the most telling kind), and checkpoints only while they take
    at most a quarter of the columns, so a long run's regular checkpoints never hide the
    curves (every change stays listed by ``m``)."""
    if extent is None or not marks:
        return []
    lo, hi = extent
    per_col = max(hi - lo, 1e-9) / max(1, width)
    rank = {kind: i for i, kind in enumerate(MARK_PRIORITY)}
    columns: dict[int, Mark] = {}
    for mark in marks:
        if lo <= mark.step <= hi:
            col = int((mark.step - lo) / per_col)
            held = columns.get(col)
            if held is None or rank.get(mark.kind, 0) < rank.get(held.kind, 0):
                columns[col] = mark
    kept = list(columns.values())
    if sum(m.kind == "checkpoint" for m in kept) > width // 4:
        kept = [m for m in kept if m.kind != "checkpoint"]
    return [(float(m.step), MARK_COLORS.get(m.kind, 250)) for m in sorted(kept,
                                                                       key=lambda m: m.step)]


@dataclass(frozen=True)
class ChartView:
    """How the charts are drawn: the settings the dashboard's keys change, and the x axis."""

    smoothing: float = 0.0
    """EMA factor (``z``)."""
    window: int | None = None
    """Only the last ``window`` records (``w``); None: the whole run."""
    log: bool = False
    """A log-scale y axis on the charts that allow one (``y``)."""
    xmap: Callable[[np.ndarray], np.ndarray] | None = None
    """Steps to the x axis's unit (wall time, ``t``); None: steps."""
    xunit: str = "step"
    """What the x axis counts, for the chart's subtitle."""


class MetricPlot(Widget):
    """A plotext chart of a few series with the run's changes marked as dotted vertical lines;
    call :meth:`replot` when data or settings change. A click lists the changes near it."""

    DEFAULT_CSS = "MetricPlot { height: 1fr; }"

    @dataclass
    class Clicked(Message):
        """The user clicked a chart: ``marks`` are the changes drawn near the click."""

        plot: MetricPlot
        marks: list[Mark]

    def __init__(self, lines: list[Line], *, ylim: tuple[float, float] | None = None,
                 loggable: bool = False, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.lines = lines
        self.ylim = ylim
        self.loggable = loggable
        """Whether the log-scale setting applies to this chart."""
        self.view = ChartView()
        self.marks: list[Mark] = []
        self._version = 0
        self._key: tuple | None = None
        self._text: Text = Text()
        self._span: tuple[float, float] | None = None  # x-axis limits drawn (x units)
        self.draws = 0
        """How many times the chart was actually rebuilt (tests assert on it)."""

    @property
    def smoothing(self) -> float:
        """The EMA factor drawn."""
        return self.view.smoothing

    @property
    def window(self) -> int | None:
        """The recent window drawn (None: the whole run)."""
        return self.view.window

    def replot(self, version: int, smoothing: float, window: int | None,
               view: ChartView | None = None, marks: list[Mark] | None = None) -> None:
        """Note new data or settings; the chart redraws on the next refresh if they differ.

        Args:
            version: the data version (bumped by new metrics and new changes).
            smoothing: EMA factor.
            window: recent records shown, None for all.
            view: the other settings (log scale, x axis); the default view when None.
            marks: the run's changes to mark; unchanged when None.
        """
        view = replace(view or ChartView(), smoothing=smoothing, window=window)
        if marks is not None:
            self.marks = marks
        if (version, view) != (self._version, self.view):
            self._version, self.view = version, view
            self.refresh()

    def render(self) -> Text:
        size = self.content_size
        view = self.view
        key = (self._version, view, size.width, size.height)
        if key != self._key:
            self._key = key
            self._text = plot_text(self.lines, size.width, size.height,
                                   smoothing=view.smoothing, window=view.window, ylim=self.ylim,
                                   log=view.log and self.loggable, xmap=view.xmap,
                                   marks=drawn_marks(self.marks, x_extent(
                                       self.lines, view.window), size.width))
            extent = x_extent(self.lines, view.window)
            if extent is not None and view.xmap is not None:
                extent = tuple(float(v) for v in view.xmap(np.array(extent)))
            self._span = extent
            self.draws += 1
        return self._text

    def marks_near(self, column: int) -> list[Mark]:
        """The changes drawn within :data:`MARK_NEAR_COLS` of content column ``column``."""
        first = self._text.plain.split("\n", 1)[0]
        left, right = first.find("┌"), first.rfind("┐")
        if self._span is None or left < 0 or right - left < 3:
            return []
        lo, hi = self._span
        if hi <= lo:
            return [m for m in self.marks if lo <= self._x(m.step) <= hi]
        per_col = (hi - lo) / (right - left - 2)
        at = lo + (column - left - 1) * per_col
        return [m for m in self.marks if abs(self._x(m.step) - at) <= MARK_NEAR_COLS * per_col
                and lo <= self._x(m.step) <= hi]

    def _x(self, step: int) -> float:
        xmap = self.view.xmap
        return float(step) if xmap is None else float(xmap(np.array([float(step)]))[0])

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None:
            self.post_message(self.Clicked(self, self.marks_near(offset.x)))


_BARS = "▁▂▃▄▅▆▇█"


def sparkline(buckets: Buckets, width: int, *, log: bool = True) -> str:
    """A one-row chart of each bucket's maximum (log scale by default, for gradient norms)."""
    if len(buckets) == 0 or width <= 0:
        return ""
    values = buckets.hi[-width:]
    if log:
        values = [math.log10(max(v, 1e-12)) for v in values]
    lo, hi = min(values), max(values)
    span = hi - lo
    if span <= 0:
        return _BARS[len(_BARS) // 2] * len(values)
    top = len(_BARS) - 1
    return "".join(_BARS[round((v - lo) / span * top)] for v in values)


class GradSparks(Widget):
    """Gradient norms of G and D as labelled log-scale sparklines with the latest values."""

    DEFAULT_CSS = "GradSparks { height: auto; }"

    def __init__(self, grad_g: Series, grad_d: Series, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.rows = (("|∇G|", grad_g, "green"), ("|∇D|", grad_d, "magenta"))
        self.window: int | None = None
        self.log_scale = True
        """Log-scale bars (norms span decades); the dashboard's ``y`` switches it."""
        self._version = 0

    def replot(self, version: int, window: int | None, log: bool = True) -> None:
        """Redraw when new data arrived or the window or scale changed."""
        if (version, window, log) != (self._version, self.window, self.log_scale):
            self._version, self.window, self.log_scale = version, window, log
            self.refresh()

    def get_content_height(self, container, viewport, width: int) -> int:  # noqa: ANN001
        return len(self.rows)

    def render(self) -> Text:
        width = self.content_size.width
        out = Text(no_wrap=True, end="")
        for i, (label, series, color) in enumerate(self.rows):
            last = series.last
            value = "--" if last is None else f"{last:.3g}"
            room = max(0, width - len(label) - len(value) - 2)
            bars = sparkline(series.buckets(room, window=self.window), room, log=self.log_scale)
            if i:
                out.append("\n")
            out.append(f"{label} ", style="bold")
            out.append(bars.ljust(room), style=color)
            out.append(f" {value}")
        return out


def marks_text(marks: list[Mark]) -> Text:
    """One line per change, newest first: its step, kind (in its marker's colour) and words."""
    out = Text(end="")
    for i, mark in enumerate(reversed(marks)):
        color = Color.from_ansi(MARK_COLORS.get(mark.kind, 250)).get_truecolor().hex
        out.append(("\n" if i else "") + f"{mark.step:>8}  ", style="dim")
        out.append(f"┊ {mark.kind:<11}", style=color)
        out.append(mark.text)
    return out


def wall_clock(times: Series) -> tuple[Callable[[np.ndarray], np.ndarray] | None, str]:
    """Steps to time since the first metrics record (``times``: wall clock by step), in
    seconds, minutes or hours as the run's length suits; ``(None, "step")`` before there are
    two records to go by."""
    if len(times) < 2:
        return None, "step"
    steps, clock = times.steps.copy(), times.values.copy()
    order = np.argsort(steps, kind="stable")
    steps, clock = steps[order], np.maximum.accumulate(clock[order])
    span = float(clock[-1] - clock[0])
    scale, unit = (3600.0, "hours") if span > 3 * 3600 else (60.0, "minutes") if span > 180 \
        else (1.0, "seconds")
    start = float(clock[0])

    def xmap(x: np.ndarray) -> np.ndarray:
        return (np.interp(x, steps, clock) - start) / scale

    return xmap, unit
