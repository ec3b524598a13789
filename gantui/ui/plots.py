"""Charts: metric line plots (plotext) and gradient-norm sparklines.

Every chart draws from :class:`~gantui.history.Buckets`, so a redraw costs in proportion to
the chart's width whatever the history's length. Charts cache their last rendering and
redraw only when the data version, the size or a view setting changes.
"""

from __future__ import annotations

import math

from rich.color import Color
from rich.text import Text
from textual.markup import escape
from textual.widget import Widget

from gantui.chart import Line, plot_text
from gantui.history import Buckets, Series
from gantui.text import safe


def legend_markup(lines: list[Line]) -> str:
    """Content markup naming each line in its colour, for a panel title."""
    parts = []
    for line in lines:
        hexcolor = Color.from_ansi(line.color).get_truecolor().hex
        parts.append(f"[{hexcolor}]━ {escape(safe(line.label))}[/]")
    return " ".join(parts)


class MetricPlot(Widget):
    """A plotext chart of a few series; call :meth:`replot` when data or settings change."""

    DEFAULT_CSS = "MetricPlot { height: 1fr; }"

    def __init__(self, lines: list[Line], *, ylim: tuple[float, float] | None = None,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.lines = lines
        self.ylim = ylim
        self.smoothing = 0.0
        self.window: int | None = None
        self._version = 0
        self._key: tuple | None = None
        self._text: Text = Text()
        self.draws = 0
        """How many times the chart was actually rebuilt (tests assert on it)."""

    def replot(self, version: int, smoothing: float, window: int | None) -> None:
        """Note new data or settings; the chart redraws on the next refresh if they differ."""
        if (version, smoothing, window) != (self._version, self.smoothing, self.window):
            self._version, self.smoothing, self.window = version, smoothing, window
            self.refresh()

    def render(self) -> Text:
        size = self.content_size
        key = (self._version, self.smoothing, self.window, size.width, size.height)
        if key != self._key:
            self._key = key
            self._text = plot_text(self.lines, size.width, size.height,
                                   smoothing=self.smoothing, window=self.window, ylim=self.ylim)
            self.draws += 1
        return self._text


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
        self._version = 0

    def replot(self, version: int, window: int | None) -> None:
        """Redraw when new data arrived or the window changed."""
        if (version, window) != (self._version, self.window):
            self._version, self.window = version, window
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
            bars = sparkline(series.buckets(room, window=self.window), room)
            if i:
                out.append("\n")
            out.append(f"{label} ", style="bold")
            out.append(bars.ljust(room), style=color)
            out.append(f" {value}")
        return out
