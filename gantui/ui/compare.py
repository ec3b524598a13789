"""The live compare view: several runs (``gantui watch RUN RUN …``, a sweep directory, or the
runs marked in the picker) on shared charts, in one table and side by side as sample grids.

Each run is followed exactly as ``gantui watch`` follows one: a
:class:`~gantui.run.follow.RunFollower` folded into a :class:`~gantui.ui.model.RunModel`. The
followers and models live in a :class:`CompareState` outside the app, so focusing a run (Enter)
leaves the compare view for that run's full dashboard and ``q`` there comes back to the same
state without reading anything twice (:func:`run_compare`).

Keys that steer (``p`` pause/resume, ``e`` set, ``x`` stop) act on the run under the cursor or,
after a confirmation, on every marked run (space marks).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Grid, Vertical
from textual.events import Resize
from textual.geometry import Size
from textual.widget import Widget
from textual.widgets import DataTable, Footer, Static

from gantui.chart import Line, plot_text
from gantui.events import Preview
from gantui.files import read_toml_dict
from gantui.notify import CommandNotifier, Notice, Notices, followed
from gantui.quality.describe import describe_value, format_value
from gantui.remote import RemoteController
from gantui.run.follow import RunFollower, decode_preview, grid_nrow, sample_files
from gantui.run.lock import is_locked
from gantui.studies.runset import RunRef, RunSet
from gantui.text import safe, value_text
from gantui.ui import graphics as graphics_mod
from gantui.ui.app import UI_CPU_BUDGET, GantuiApp, redraw_due, write_notice
from gantui.ui.graphics import Graphics, SettlesGraphics
from gantui.ui.modals import ChoiceModal, KeyValueModal
from gantui.ui.model import RunModel, checked_changes
from gantui.ui.plots import MetricPlot
from gantui.ui.preview import PreviewPanel

CHARTS = (("loss_d", "loss D"), ("loss_g", "loss G"), ("d_real", "D(x)"),
          ("d_fake", "D(G(z))"), ("grad_g", "|∇G|"), ("grad_d", "|∇D|"), ("quality", "quality"))
"""The shared charts: ``(series, title)``, one line per run on each."""
CHART_MIN = (36, 8)
"""Smallest chart (columns, rows) the view lays out; fewer fit: ``m`` pages through them."""
OWNER_CHECK_S = 1.0
"""Seconds between checks of which runs a live process owns."""


@dataclass
class Followed:
    """One run of the compare view: where it is, its follower and what it has told so far."""

    ref: RunRef
    follower: RunFollower
    model: RunModel = field(default_factory=RunModel)
    marked: bool = False
    """Marked (space) for keys that steer every marked run."""
    owned: bool = False
    """A live process owned the run at the last check (it can be steered)."""
    controller: RemoteController | None = None
    """Made when first needed; closed by :meth:`CompareState.close`."""
    drain: Callable[[], list] | None = None
    """The follower's drain, running the ``notify`` command too when one is given."""
    notices: Notices = field(default_factory=Notices)
    """What of this run is worth a desktop notification (none for its history)."""
    drained: bool = False
    """The first drain (the run's history) is done."""

    @property
    def state(self) -> str:
        """The run's state as the table shows it: ``pending`` before its directory holds a
        run (a sweep's run not started yet), ``crashed`` when the journal says it runs but no
        process owns it."""
        model = self.model
        if not model.run_dir:
            return "pending"
        return "crashed" if model.live and not self.owned and model.step else model.state

    @property
    def steerable(self) -> bool:
        """True while a process owns the run and its trainer answers commands."""
        return self.owned and self.model.live

    def control(self) -> RemoteController:
        """The run's controller over its control socket."""
        if self.controller is None:
            self.controller = RemoteController(self.ref.path, source="compare")
        return self.controller


class CompareState:
    """The followed runs, kept while the view goes to one run's dashboard and back.

    Args:
        runset: The runs.
        preview_max_side: Largest side of a decoded sample grid.
        notify: A command run for what happens to any run from now on (as ``gantui watch
            --notify`` runs it for one run).
    """

    def __init__(self, runset: RunSet, preview_max_side: int = 256,
                 notify: str | None = None) -> None:
        self.runset = runset
        self.runs = [Followed(ref, RunFollower(ref.path, preview_max_side))
                     for ref in runset.runs]
        self.notifiers: list[CommandNotifier] = []
        for run in self.runs:
            run.drain = run.follower.drain
            if notify:
                run.drain, notifier = followed(run.follower.drain, notify, run.ref.path)
                self.notifiers.append(notifier)
        self.told: list[Notice] = []
        """Notices for the terminal not yet written (:meth:`take_told` takes them)."""
        self._owners_checked = -1.0
        self.cursor = 0
        """The table row the view had when it left for a dashboard, restored on return."""
        self.samples = False
        """Whether the view showed the sample grids when it left."""

    def poll(self, quiet: int | None = None) -> int:
        """Drain every follower into its model; returns how many events arrived.

        Args:
            quiet: The run (its index) whose notices another view tells: its dashboard,
                while it is focused. Its events are read (its ``--notify`` command runs) but
                add nothing to :attr:`told`.
        """
        count = 0
        for index, run in enumerate(self.runs):
            assert run.drain is not None
            events = run.drain()
            for event in events:
                run.model.apply(event)
                if not run.drained or index == quiet:
                    run.notices.remember(event)
                elif notice := run.notices.see(event):
                    self.told.append(notice)
            run.drained = True
            count += len(events)
        now = time.monotonic()
        if now - self._owners_checked >= OWNER_CHECK_S:
            self._owners_checked = now
            for run in self.runs:
                run.owned = is_locked(run.ref.path)
        return count

    def take_told(self) -> list[Notice]:
        """The notices :meth:`poll` gathered for the terminal since the last call."""
        told, self.told = self.told, []
        return told

    def version(self) -> int:
        """Moves whenever any run's metrics move (the charts' data version)."""
        return sum(run.model.metrics_version for run in self.runs)

    def close(self) -> None:
        """Release the controllers' threads; let the notify commands under way finish."""
        for run in self.runs:
            if run.controller is not None:
                run.controller.close()
                run.controller = None
        for notifier in self.notifiers:
            notifier.close()


@dataclass(frozen=True)
class Focus:
    """The compare view ended to show one run's full dashboard (``app.return_value``)."""

    index: int
    """The run's position in :attr:`CompareState.runs`."""


class Legend(Widget):
    """Each run's short name in its colour; numbers only when the names would not fit in two
    rows (the table's first column tells which number is which run)."""

    DEFAULT_CSS = "Legend { height: auto; }"

    def __init__(self, runs: list[Followed], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.runs = runs

    def entries(self, width: int) -> list[str]:
        """The legend's entries for ``width`` columns."""
        full = [f"━ {run.ref.label}" for run in self.runs]
        if _rows(full, width) <= 2:
            return full
        return [f"━{i + 1}" for i in range(len(self.runs))]

    def get_content_height(self, container, viewport, width: int) -> int:  # noqa: ANN001
        return _rows(self.entries(width), width)

    def render(self) -> Text:
        width = self.content_size.width
        out = Text(no_wrap=False, end="")
        used = 0
        for run, entry in zip(self.runs, self.entries(width), strict=True):
            if used and used + 2 + len(entry) > width:
                out.append("\n")
                used = 0
            elif used:
                out.append("  ")
                used += 2
            style = f"color({run.ref.color})" + (" bold" if run.marked else "")
            out.append(entry, style=style)
            used += len(entry)
        return out


def _rows(entries: list[str], width: int) -> int:
    """Rows ``entries`` take, two spaces apart, in ``width`` columns."""
    rows, used = 1, 0
    for entry in entries:
        if used and used + 2 + len(entry) > max(1, width):
            rows, used = rows + 1, 0
        used += (2 if used else 0) + len(entry)
    return rows


class StepSlider(Static):
    """One step for every run's sample grid: a bar from the first stored grid to the last."""

    DEFAULT_CSS = "StepSlider { height: 1; }"

    def show(self, steps: list[int], index: int | None) -> None:
        """Draw the slider at ``steps[index]`` (None: following the newest grids)."""
        if not steps:
            self.update(Text("no stored sample grids yet", style="dim"))
            return
        at = len(steps) - 1 if index is None else index
        width = max(8, self.content_size.width - 40)
        pos = round(at / max(1, len(steps) - 1) * (width - 1))
        bar = "━" * pos + "●" + "─" * (width - pos - 1)
        mode = "newest (live)" if index is None else f"step {steps[at]}"
        self.update(Text(f"{mode:>14} {steps[0]} {bar} {steps[-1]}  ←/→ step, l live",
                         no_wrap=True))


class CompareChart(MetricPlot):
    """A chart with one line per run: through the middle of each column's range, not the
    dashboard's min-max envelope (two lines per run would halve the readability and double
    the cost)."""

    def render(self) -> Text:
        size = self.content_size
        key = (self._version, self.smoothing, self.window, size.width, size.height)
        if key != self._key:
            self._key = key
            self._text = plot_text(self.lines, size.width, size.height,
                                   smoothing=self.smoothing, window=self.window,
                                   envelope=False)
            self.draws += 1
        return self._text


class RunGrid(PreviewPanel):
    """One run's sample grid, its caption led by the run's number in its colour."""

    def __init__(self, number: int, *, graphics: Graphics, classes: str | None = None) -> None:
        super().__init__(graphics=graphics, budget=UI_CPU_BUDGET, classes=classes)
        self.number = number

    def caption(self) -> str:
        image = self.image
        return f"{self.number} @{image.step}" if image is not None else str(self.number)


class RunTable(DataTable):
    """The runs' table. Enter is its own select key, so it acts on the row the keys typed
    just before it chose (an app's priority key would overtake them): the app focuses the
    selected run."""

    BINDINGS: ClassVar = [Binding("enter", "select_cursor", "Focus")]


class CompareApp(SettlesGraphics, App[Focus | None]):
    """Runs side by side, live or finished; exits with a :class:`Focus` to show one run's
    dashboard, or None to quit."""

    CSS_PATH = "compare.tcss"
    TITLE = "gantui compare"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS: ClassVar = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar = [(0, "-short"), (36, "-tall")]

    BINDINGS: ClassVar = [
        Binding("space", "mark", "Mark"),  # Enter is the table's (RunTable)
        Binding("p", "pause", "Pause"),
        Binding("e", "edit", "Set"),
        Binding("x", "stop_run", "Stop"),
        Binding("m", "more", "More charts"),
        Binding("g", "samples", "Grids"),
        Binding("left", "step(-1)", "Step −", show=False),
        Binding("right", "step(1)", "Step +", show=False),
        Binding("l", "live", "Live", show=False),
        Binding("q", "quit", "Quit"),
    ]

    STEER_ACTIONS = frozenset({"pause", "edit", "stop_run"})

    def __init__(self, state: CompareState, *, poll_hz: float = 4.0, plot_hz: float = 2.0,
                 graphics: Graphics | None = None) -> None:
        """
        Args:
            state: the followed runs (kept by the caller across a focus and back).
            poll_hz: how often every follower is drained.
            plot_hz: most redraws per second, within :data:`~gantui.ui.app.UI_CPU_BUDGET`.
            graphics: how sample grids are drawn; None: decided when the app starts.
        """
        super().__init__()
        self.state = state
        self.runs = state.runs
        self.title = f"gantui compare · {state.runset.title}"
        self.poll_hz = poll_hz
        self.plot_interval = 1.0 / plot_hz
        self.page = 0
        """The first chart shown, when not all fit (``m`` moves it)."""
        self.per_page = len(CHARTS)
        self.samples = state.samples
        """True while the sample grids replace the charts (``g``)."""
        self.slider: int | None = None
        """Index into :attr:`steps` of the shared step, None while following the newest."""
        self.steps: list[int] = []
        """Every step at which some run stored a grid."""
        self.pending: list[tuple[str, Future]] = []
        self.redraws = 0
        """Full redraws done (charts replotted and table refreshed)."""
        self.redraw_s = 0.0
        """CPU seconds of the last :meth:`redraw` (Textual draws the charts afterwards)."""
        self._plotted = -1
        self._n_charts = 0
        self._rows: dict[int, list[str]] = {}
        self._files: tuple[tuple[int, ...], list[list[tuple[int, Path]]]] = ((), [])
        self._seen: tuple = ()
        self._last_view = 0.0
        self._last_view_cpu = 0.0
        self._grid_cache: dict[tuple[int, int], Preview | None] = {}
        self._graphics_wanted = graphics

    # ---- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        self.status = Static(id="status")
        self.charts = Grid(id="charts")
        self.plots = []
        for key, title in CHARTS:
            plot = CompareChart([Line(run.ref.label, run.model.series[key], run.ref.color)
                               for run in self.runs], classes="panel chart")
            plot.border_title = title
            self.plots.append(plot)
        self.grids = Grid(id="grids")
        self.previews = [RunGrid(i + 1, graphics=self.graphics, classes="panel grid")
                         for i in range(len(self.runs))]
        self.step_slider = StepSlider(id="slider")
        self.legend = Legend(self.runs, id="legend")
        self.table: DataTable = RunTable(id="table", cursor_type="row", zebra_stripes=True)
        yield self.status
        with self.charts:
            yield from self.plots
        with Vertical(id="samples"):
            yield self.step_slider
            with self.grids:
                yield from self.previews
        yield self.legend
        yield self.table
        yield Footer()

    def on_mount(self) -> None:
        keys = self.state.runset.keys
        self.table.add_column("#", key="n")
        if not keys:
            self.table.add_column("run", key="run")
        for key in keys:
            self.table.add_column(safe(key, 20), key=f"k:{key}")
        for label, key in (("state", "state"), ("step", "step"), ("quality", "quality"),
                           ("best", "best"), ("img/s", "rate")):
            self.table.add_column(label, key=key)
        for i, run in enumerate(self.runs):
            self.table.add_row(*self._row(i, run), key=str(i))
        for preview, run in zip(self.previews, self.runs, strict=True):
            preview.border_subtitle = Text(run.ref.label, style=f"color({run.ref.color})")
        self.table.focus()
        self.table.move_cursor(row=min(self.state.cursor, len(self.runs) - 1), animate=False)
        self._last_view_cpu = time.thread_time()
        self.set_interval(1.0 / self.poll_hz, self.poll)
        self.poll()
        self._layout()

    def on_resize(self, event: Resize) -> None:
        self.graphics = graphics_mod.follow_window(self.graphics)
        self._layout(event.size)  # self.size is still the old one: App's own handler runs next

    def _layout(self, size: Size | None = None) -> None:
        """Fit as many charts as the room allows (``m`` pages through the rest) and lay the
        sample grids out in a grid of about square cells."""
        width, height = size or self.size
        room = max(1, height - 4 - min(len(self.runs) + 1, 6 if height < 36 else 17))
        cols = max(1, min(4, width // CHART_MIN[0]))
        rows = max(1, min(1 if height < 36 else 2, room // CHART_MIN[1]))
        self._n_charts = len(self._charts())
        self.per_page = min(self._n_charts, cols * rows)
        self.charts.styles.grid_size_columns = min(cols, self.per_page)
        self.charts.styles.grid_size_rows = max(1, -(-self.per_page // cols))
        n = len(self.runs)
        # the most square room per grid: a cell is about twice as high as it is wide
        gcols = max(range(1, n + 1), key=lambda c: min(width / c, 2 * (room - 1) / -(-n // c)))
        self.grids.styles.grid_size_columns = gcols
        self.grids.styles.grid_size_rows = -(-n // gcols)
        self._show_page()

    def _charts(self) -> list[MetricPlot]:
        """The charts with something to draw (quality only once a run was evaluated)."""
        has_quality = any(run.model.quality is not None for run in self.runs)
        return [p for p, (key, _) in zip(self.plots, CHARTS, strict=True)
                if key != "quality" or has_quality]

    def _show_page(self) -> None:
        charts = self._charts()
        self.page %= max(1, len(charts))
        shown = {id(p) for p in (charts + charts)[self.page:self.page + self.per_page]}
        for plot in self.plots:
            plot.display = id(plot) in shown
        self.screen.set_class(self.samples, "-samples")

    # ---- the timer ---------------------------------------------------------------------------

    def poll(self) -> None:
        """Drain every run, check command replies, redraw what changed (within budget)."""
        if self._exit:
            return
        try:
            self.state.poll()
        except Exception as exc:  # noqa: BLE001 - a follower failing must not kill the view
            self.notify(safe(f"reading the runs failed: {exc}"), severity="error", markup=False)
        for notice in self.state.take_told():  # through the terminal, as the dashboard's
            write_notice(self, notice)
        self._check_replies()
        now = time.monotonic()
        seen = tuple((r.model.state, r.owned, r.marked) for r in self.runs)
        urgent = seen != self._seen
        if urgent:
            self._seen = seen
            self.refresh_bindings()
        if urgent or self._redraw_due(now):
            self.redraw()

    def _redraw_due(self, now: float) -> bool:
        return redraw_due(now, self._last_view, self._last_view_cpu, self.plot_interval)

    def redraw(self) -> None:
        """Hand the charts the data version, refresh the table, legend and sample grids."""
        start = time.thread_time()
        self._last_view = time.monotonic()
        version = self.state.version()
        if version != self._plotted:
            self._plotted = version
            for plot in self.plots:
                plot.replot(version, 0.0, None)
            self._title_quality()
            if len(self._charts()) != self._n_charts:  # the first evaluation: its chart
                self._layout()
        for i, run in enumerate(self.runs):
            row = self._row(i, run)
            if [c.plain for c in row] != self._rows.get(i):  # only what changed
                self._rows[i] = [c.plain for c in row]
                for column, cell in zip(self.table.columns, row, strict=True):
                    # a column as wide as its widest value: 980/4000, not 980/400
                    self.table.update_cell(str(i), column, cell, update_width=True)
        self.legend.refresh(layout=True)
        if self.samples:
            self._show_grids()
        self._show_status()
        self.redraws += 1
        self.redraw_s = time.thread_time() - start
        self._last_view_cpu = time.thread_time()

    def _title_quality(self) -> None:
        metrics = {r.model.quality.primary for r in self.runs if r.model.quality is not None}
        if metrics:
            self.plots[-1].border_title = "quality: " + ", ".join(sorted(metrics))

    def _row(self, i: int, run: Followed) -> list[Text]:
        model, keys = run.model, self.state.runset.keys
        mark = "●" if run.marked else " "
        cells = [Text(f"{mark}━{i + 1}", style=f"color({run.ref.color}) bold")]
        if not keys:
            cells.append(Text(run.ref.label))
        cells += [Text(safe(value_text(run.ref.params.get(k)), 16)) for k in keys]
        quality = model.quality
        now = best = ""
        if quality is not None:
            now = describe_value(quality.primary, quality.value)
            best = f"{format_value(quality.primary, quality.best_value)} @{quality.best_step}"
        step = f"{model.step}/{model.total_steps}" if model.total_steps else str(model.step)
        state = run.state
        cells += [Text(state, style=_STATE_STYLES.get(state, "")), Text(step, justify="right"),
                  Text(safe(now, 24)), Text(safe(best, 24)),
                  Text(f"{model.img_per_s:,.0f}" if model.img_per_s else "-", justify="right")]
        return cells

    def _show_status(self) -> None:
        live = sum(r.steerable for r in self.runs)
        marked = sum(r.marked for r in self.runs)
        charts = self._charts()
        page = "" if self.per_page >= len(charts) else \
            f" · charts {self.page + 1}-{min(len(charts), self.page + self.per_page)}" \
            f"/{len(charts)} (m)"
        text = (f"{len(self.runs)} runs · {live} live" + (f" · {marked} marked" if marked else "")
                + page)
        self.status.update(Text(text, no_wrap=True))

    # ---- sample grids ------------------------------------------------------------------------

    def _show_grids(self) -> None:
        """Each run's newest grid, or the newest at or before the slider's step."""
        versions = tuple(run.model.image_version for run in self.runs)
        if versions != self._files[0]:  # a new grid somewhere: list the stored ones again
            self._files = (versions, [sample_files(run.ref.path) for run in self.runs])
        files = self._files[1]
        self.steps = sorted({step for found in files for step, _ in found})
        if self.slider is not None:
            self.slider = min(self.slider, len(self.steps) - 1) if self.steps else None
        self.step_slider.show(self.steps, self.slider)
        for i, (run, preview, found) in enumerate(zip(self.runs, self.previews, files,
                                                      strict=True)):
            if self.slider is None:
                preview.show(run.model.image)
                continue
            step = self.steps[self.slider]
            older = [(s, p) for s, p in found if s <= step]
            preview.show(self._grid(i, run, *older[-1]) if older else None)

    def _grid(self, i: int, run: Followed, step: int, path: Path) -> Preview | None:
        key = (i, step)
        if key not in self._grid_cache:
            config = run.model.config or read_toml_dict(run.ref.path / "config.toml")
            self._grid_cache[key] = decode_preview(path, step, grid_nrow(config),
                                                   run.follower.preview_max_side)
        return self._grid_cache[key]

    # ---- replies -----------------------------------------------------------------------------

    def _check_replies(self) -> None:
        still = []
        for what, future in self.pending:
            if not future.done():
                still.append((what, future))
            elif (exc := future.exception()) is not None:
                self.notify(safe(f"{what} failed: {exc}", 300), severity="error", markup=False)
            else:
                self.notify(safe(f"{what}: done", 300), markup=False)
        self.pending = still

    # ---- keys --------------------------------------------------------------------------------

    @property
    def cursor(self) -> Followed | None:
        """The run under the table's cursor."""
        row = self.table.cursor_row
        return self.runs[row] if 0 <= row < len(self.runs) else None

    def targets(self) -> list[Followed]:
        """The runs a steering key acts on: the marked ones, else the one under the cursor."""
        marked = [run for run in self.runs if run.marked]
        if marked:
            return marked
        return [self.cursor] if self.cursor is not None else []

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if len(self.screen_stack) > 1 and action in (*self.STEER_ACTIONS, "focus_run", "mark"):
            return False  # a dialog is open: its keys go to it
        if action in self.STEER_ACTIONS:
            return any(run.steerable for run in self.targets())
        if action in ("step", "live"):
            return self.samples
        return True

    def action_focus_run(self) -> None:
        """Leave for the full dashboard of the run under the cursor (``q`` there comes back)."""
        if self.cursor is not None:
            self.state.cursor, self.state.samples = self.table.cursor_row, self.samples
            self.exit(Focus(self.table.cursor_row))

    def on_data_table_row_selected(self) -> None:
        """Enter (or a click) on a row: its full dashboard."""
        self.action_focus_run()

    def action_mark(self) -> None:
        """Mark or unmark the run under the cursor for keys that steer every marked run."""
        run = self.cursor
        if run is not None:
            run.marked = not run.marked
            self.redraw()
            self.refresh_bindings()

    def action_more(self) -> None:
        """Show the next charts when not all fit."""
        self.page += self.per_page
        self._show_page()
        self._show_status()

    def action_samples(self) -> None:
        """Switch between the charts and every run's sample grid side by side."""
        self.samples = not self.samples
        self._files = ((), [])
        self._show_page()
        self.redraw()
        self.refresh_bindings()

    def action_step(self, delta: int) -> None:
        """Move the shared step of the sample grids."""
        if not self.steps:
            return
        at = len(self.steps) - 1 if self.slider is None else self.slider
        self.slider = min(max(0, at + delta), len(self.steps) - 1)
        self._show_grids()

    def action_live(self) -> None:
        """Follow the newest grids again."""
        self.slider = None
        self._show_grids()

    def _confirm(self, runs: list[Followed], what: str, then: Callable[[], None]) -> None:
        """Run ``then`` at once for the run under the cursor, after a confirmation for
        marked runs."""
        if not any(run.marked for run in runs):
            then()
            return
        names = ", ".join(str(self.runs.index(r) + 1) for r in runs)
        self.push_screen(ChoiceModal(Text(f"{what} {len(runs)} marked runs ({names})?"),
                                     [("y", what, "yes"), ("n", "Cancel", "cancel")]),
                         lambda answer: then() if answer == "yes" else None)

    def _send(self, runs: list[Followed], what: str,
              call: Callable[[RemoteController], Future]) -> None:
        for run in runs:
            if not run.steerable:
                self.notify(safe(f"{run.ref.label}: not live, skipped", 200), markup=False)
                continue
            self.pending.append((f"{what} {run.ref.label}", call(run.control())))

    def action_pause(self) -> None:
        """Pause the target runs, or resume them when all are paused."""
        runs = [run for run in self.targets() if run.steerable]
        resume = all(run.model.state == "paused" for run in runs)
        what = "Resume" if resume else "Pause"
        self._confirm(runs, what, lambda: self._send(
            runs, what.lower(), lambda c: c.resume() if resume else c.pause()))

    def action_stop_run(self) -> None:
        """Stop the target runs (always asked: each writes a checkpoint, then ends)."""
        runs = [run for run in self.targets() if run.steerable]
        names = ", ".join(str(self.runs.index(r) + 1) for r in runs)
        self.push_screen(ChoiceModal(Text(f"Stop run {names}? A checkpoint is written first."),
                                     [("s", "Checkpoint and stop", "stop"),
                                      ("n", "Cancel", "cancel")]),
                         lambda answer: self._send(runs, "stop", lambda c: c.stop())
                         if answer == "stop" else None)

    def action_edit(self) -> None:
        """Set live hyperparameters of the target runs (the first one's values prefilled)."""
        runs = [run for run in self.targets() if run.steerable]
        if not runs:
            return
        model = runs[0].model
        values = {key: str(value) for key, value in model.hyperparameters().items()}

        def validate(raw: dict[str, str]) -> dict[str, Any]:
            for run in runs:  # every target must take it; the first one's changes are sent
                checked = checked_changes(run.model, raw)
            return checked_changes(model, raw) or checked

        marked = any(run.marked for run in runs)
        title = f"Set on {len(runs)} marked runs" if marked else f"Set on {runs[0].ref.label}"
        self.push_screen(KeyValueModal(f"{title} (applied between steps)", values, validate),
                         lambda changes: self._apply(runs, changes))

    def _apply(self, runs: list[Followed], changes: dict[str, Any] | None) -> None:
        if not changes:
            return
        text = ", ".join(f"{k}={v}" for k, v in changes.items())
        self._confirm(runs, f"Set {text} on", lambda: self._send(
            runs, f"set {text}", lambda c: c.set(changes, source="compare")))

    def action_quit(self) -> None:
        """Leave the compare view; the runs carry on."""
        self.exit(None)


_STATE_STYLES = {"running": "bold green", "paused": "bold yellow", "starting": "green",
                 "stopped": "yellow", "error": "bold red", "crashed": "red"}


def dashboard_for(state: CompareState, index: int,
                  graphics: Graphics | None = None) -> GantuiApp:
    """The full dashboard of one run of the compare view, as ``gantui watch RUN`` shows it
    (``q`` detaches from it: back to the compare view)."""
    run = state.runs[index]
    path = run.ref.path
    controller = run.control()

    def beside() -> list[Notice]:  # the other runs are followed on: their notices stay live
        state.poll(quiet=index)
        return state.take_told()

    app = GantuiApp(RunFollower(path).drain, controller, attached=True,
                    title=f"gantui watch · {run.ref.name} (q: back to compare)",
                    can_steer=lambda: is_locked(path), graphics=graphics,
                    history=True,  # its past (a finished run's end) raises no notification
                    beside=beside)
    return app


def run_compare(runset: RunSet, notify: str | None = None) -> None:
    """The compare view in this terminal, with focus on one run and back, until ``q``;
    ``notify``: a command run for what happens to any run while it is open."""
    from gantui.ui.tty import run_follower

    state = CompareState(runset, notify=notify)
    graphics = graphics_mod.detect()
    try:
        while True:
            app = CompareApp(state, graphics=graphics)
            run_follower(app)
            if not isinstance(app.return_value, Focus):
                return
            run_follower(dashboard_for(state, app.return_value.index, graphics))
    finally:
        state.close()
