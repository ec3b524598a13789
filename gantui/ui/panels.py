"""Text panels: the status bar, the live hyperparameters and the event log."""

from __future__ import annotations

import math
import time

from rich.text import Text
from textual.widget import Widget
from textual.widgets import RichLog, Static

from gantui.system import system_lines
from gantui.ui.model import LogLine, RunModel, format_duration, hyperparameter_text

STALE_SYSTEM_S = 25.0
"""A system sample older than this is shown with its age (a run watched after it ended)."""

STATE_STYLES = {
    "starting": "bold yellow",
    "running": "bold green",
    "paused": "bold yellow reverse",
    "checkpointing": "bold cyan",
    "finished": "bold blue",
    "stopped": "bold blue",
    "error": "bold white on red",
}

LEVEL_STYLES = {
    "info": "",
    "change": "cyan",
    "checkpoint": "green",
    "warning": "bold yellow",
    "error": "bold white on red",
}


def status_text(model: RunModel, view: str) -> Text:
    """The one-line status: state, run, preset, device, progress, speed, ETA, view settings."""
    out = Text(no_wrap=True, overflow="ellipsis", end="")
    out.append(f" {model.state.upper()} ", style=STATE_STYLES.get(model.state, "bold"))
    total = model.total_steps
    pct = f" {100 * model.step / total:.0f}%" if total else ""
    parts = [  # most important first: narrow terminals cut the end
        f"step {model.step}/{total or '?'}{pct}",
        f"{model.img_per_s:.0f} img/s" if math.isfinite(model.img_per_s) else "",  # a script's
        f"data {model.data_wait:.0%}" if math.isfinite(model.data_wait) else "",
        f"Q reads {model.info_acc:.0%}" if math.isfinite(model.info_acc) else "",
        f"aug {model.aug_p:.0%}" if math.isfinite(model.aug_p) else "",
        f"ETA {format_duration(model.eta_s) if model.live else '--'}",
        f"ep {model.epoch}",
        model.name or "…",
        model.preset,
        model.device,
    ]
    out.append(" " + " │ ".join(p for p in parts if p))
    if model.alerts:
        out.append(f" │ ⚠ {model.alerts}", style="bold yellow")
    out.append(f" │ {view}", style="dim")
    return out


class StatusBar(Static):
    """The top line of the dashboard."""

    def show(self, model: RunModel, view: str) -> None:
        """Redraw from the model; ``view`` describes the smoothing and window settings."""
        self.update(status_text(model, view))


class HyperPanel(Widget):
    """Current values of the live hyperparameters; recently changed ones stand out.

    A table when there is a row per key, otherwise the pairs flow and wrap (80x24 terminals).
    """

    def __init__(self, model: RunModel, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.model = model

    def show(self) -> None:
        """Redraw from the model."""
        self.refresh()

    def render(self) -> Text:
        model = self.model
        values = model.hyperparameters()
        size = self.content_size
        out = Text(end="", no_wrap=True, overflow="ellipsis")
        if size.height >= len(values):  # a table: one key per row
            width = max(len(k) for k in values)
            for i, (key, value) in enumerate(values.items()):
                changed = key in model.changed_at
                out.append(("\n" if i else "") + f"{key:<{width}} ", style="dim")
                out.append(hyperparameter_text(value), style="bold cyan" if changed else "bold")
                if changed:
                    out.append(f" @{model.changed_at[key]}", style="dim cyan")
            return out
        used = 0  # pairs flow, wrapping between pairs, never inside one
        for key, value in values.items():
            shown = hyperparameter_text(value)
            need = len(key) + 1 + len(shown)
            if used and used + 2 + need > size.width:
                out.append("\n")
                used = 0
            elif used:
                out.append("  ")
                used += 2
            out.append(f"{key} ", style="dim")
            out.append(shown, style="bold cyan" if key in model.changed_at else "bold")
            used += need
        return out


class SystemPanel(Widget):
    """GPU utilisation, memory, temperature and power, CPU and RAM: one line on short
    terminals, a line per GPU plus the host's when there is room."""

    def __init__(self, model: RunModel, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.model = model

    def show(self) -> None:
        """Redraw from the model."""
        self.refresh(layout=True)

    def render(self) -> Text:
        sample = self.model.system
        out = Text(end="", no_wrap=True, overflow="ellipsis")
        if sample is None:
            return out
        compact = self.screen.has_class("-short")
        age = time.time() - sample.time
        stale = f"as of {format_duration(age)} ago" if age > STALE_SYSTEM_S else ""
        lines = system_lines(sample, self.content_size.width, 1 if compact else 9, stale)
        for i, line in enumerate(lines):
            out.append(("\n" if i else "") + line, style="" if i < len(lines) - 1 or compact
                       else "dim")
        return out


class EventLog(RichLog):
    """Changes, checkpoints, warnings and lifecycle lines, newest at the bottom."""

    def __init__(self, *, id: str | None = None, classes: str | None = None) -> None:
        super().__init__(max_lines=1000, wrap=True, markup=False, id=id, classes=classes)
        self.entries: list[LogLine] = []
        """Every line written, for tests and for anyone inspecting the app."""

    def add(self, line: LogLine) -> None:
        """Append one line, styled by its level."""
        self.entries.append(line)
        text = Text(f"{line.step:>7} ", style="dim")
        prefix = {"warning": "⚠ ", "error": "✖ "}.get(line.level, "")
        text.append(prefix + line.text, style=LEVEL_STYLES.get(line.level, ""))
        self.write(text)


def heat_style(share: float, n_classes: int) -> str:
    """A colour for a class's share of the samples: black for none, brighter up to twice
    the even share (``1 / n_classes``)."""
    level = 0.0 if not share > 0 else min(1.0, 0.15 + 0.85 * share * n_classes / 2)
    return f"rgb({round(255 * level)},{round(190 * level)},{round(60 * level)})"


def class_strip_text(history: list[tuple[int, list[float]]], width: int) -> Text:
    """The class heat strip: a column per evaluation (the latest ``width - 4`` of them,
    newest on the right), two classes per terminal row in half blocks (upper ``0, 2, 4...``,
    lower ``1, 3, 5...``), so a class that vanishes shows as a row going dark."""
    out = Text(end="", no_wrap=True, overflow="crop")
    if not history:
        return out
    n = len(history[-1][1])
    columns = history[-max(1, width - 4):]
    for row in range(0, n, 2):
        if row:
            out.append("\n")
        label = f"{row},{row + 1}" if row + 1 < n else f"{row}"
        out.append(f"{label:>3} ", style="dim")
        for _, shares in columns:
            top = shares[row] if row < len(shares) else 0.0
            bottom = shares[row + 1] if row + 1 < len(shares) else 0.0
            lower = heat_style(bottom, n) if row + 1 < n else "black"
            out.append("▀", style=f"{heat_style(top, n)} on {lower}")
    return out


class ClassStrip(Widget):
    """The share of samples the judge puts in each class, over the run's evaluations
    (unconditional MNIST runs); shown from the first evaluation that measured it."""

    def __init__(self, model: RunModel, *, id: str | None = None,
                 classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.model = model

    def show(self) -> None:
        """Redraw from the model; shown once there is a class histogram."""
        history = self.model.class_history
        self.set_class(bool(history), "-shown")
        if history:
            step, shares = history[-1]
            present = sum(1 for s in shares if s >= 0.01)
            self.border_title = f"classes over evaluations · {present}/{len(shares)} present"
        self.refresh()

    def render(self) -> Text:
        return class_strip_text(self.model.class_history, self.content_size.width)
