"""The dashboard: a Textual app over the event stream, with keys that steer the run.

The app never sees the trainer. It polls ``drain()`` on a timer (the only place events enter),
folds them into a :class:`~gantui.ui.model.RunModel`, and sends commands through a controller
whose methods return futures, which the same timer checks. The same app therefore serves a
run in this process (a :class:`~gantui.engine.control.Controller`) or a run elsewhere (a remote
controller and a run-directory follower).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.widgets import Footer

from gantui import config as config_mod
from gantui.errors import GantuiError
from gantui.events import Alert, Event, Preview, StateChanged
from gantui.history import SMOOTHING_LEVELS
from gantui.live import Spec, spec_from_json
from gantui.notify import Notice, Notices, terminal_escape
from gantui.quality.describe import describe_value, diagnosis_line, format_value
from gantui.text import safe
from gantui.ui import graphics as graphics_mod
from gantui.ui.graphics import Graphics, SettlesGraphics
from gantui.ui.modals import ChangesModal, ChoiceModal, FieldsModal, HelpModal, KeyValueModal
from gantui.ui.model import LogLine, RunModel, checked_changes
from gantui.ui.panels import ClassStrip, EventLog, HyperPanel, StatusBar, SystemPanel
from gantui.ui.plots import (
    ChartView,
    GradSparks,
    Line,
    MetricPlot,
    legend_markup,
    marks_text,
    wall_clock,
)
from gantui.ui.preview import PreviewPanel, save_png

Drain = Callable[[], list[Event]]

HELP_NOTES = """\
Plots: each column shows the min and max of the steps it covers, so spikes stay visible.
z cycles the smoothing (EMA), w switches between the whole run and the recent window,
y puts the loss and gradient charts on a log scale, t the x axis in steps or wall time.
Changes (set, pause/resume, checkpoint, resumed run, warning) are dotted lines on the
charts: m lists them, a click on a chart lists those near it.
Warnings (⚠ in the status bar) are explained in the event log (v: more lines)."""


EXTRA_COLORS = (45, 214, 118, 177, 203, 228)
"""Line colours (ANSI 256) of the charts of a script's own values, in turn."""

UI_CPU_BUDGET = 0.03
"""Most of a core the dashboard's redraws may use on average (3%)."""
MAX_VIEW_INTERVAL = 5.0
"""Seconds after which the views redraw whatever the budget says, so they never look stuck."""


def redraw_due(now: float, last_view: float, last_view_cpu: float, interval: float) -> bool:
    """Whether a view may redraw at ``now`` (monotonic): once ``interval`` has passed since
    ``last_view`` and this thread's CPU time since then (``last_view_cpu``; the drawing
    Textual did for it included) is within :data:`UI_CPU_BUDGET` of the time elapsed, and
    always after :data:`MAX_VIEW_INTERVAL`. The UI thread shares the GIL with a trainer in
    this process, so its CPU time is taken from training: this bounds a view's cost on any
    machine."""
    elapsed = now - last_view
    if elapsed < interval:
        return False
    if elapsed >= MAX_VIEW_INTERVAL:
        return True
    return time.thread_time() - last_view_cpu <= UI_CPU_BUDGET * elapsed


def write_notice(app: App, notice: Notice) -> None:
    """A desktop notification through the terminal: Textual owns it, so the escape goes
    through ``app``'s driver, in order with the frames (as Textual's own ``bell`` and OSC 52
    do)."""
    escape = terminal_escape(notice)
    if escape and app._driver is not None:
        app._driver.write(escape)


@dataclass(frozen=True)
class Outcome:
    """How the dashboard ended, returned by ``app.run()`` (and in ``app.return_value``)."""

    action: str
    """``stop``: the user stopped the run (it reached ``stopped``/``finished``/``error``, or the
    user gave up waiting: join the trainer); ``detach``: the user left and the run carries on;
    ``quit``: the run had already ended when the user quit."""
    state: str
    """The last run state the dashboard saw."""
    step: int
    """The last step the dashboard saw."""

    @property
    def detached(self) -> bool:
        """True when the run should keep going without the dashboard."""
        return self.action == "detach"


class GantuiApp(SettlesGraphics, App[Outcome]):
    """The live dashboard of one run."""

    CSS_PATH = "app.tcss"
    TITLE = "gantui"
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS: ClassVar = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS: ClassVar = [(0, "-short"), (36, "-tall")]

    BINDINGS: ClassVar = [
        Binding("p", "pause", "Pause/resume"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("l", "learning_rates", "LRs"),
        Binding("e", "edit", "Edit"),
        Binding("s", "save", "Save PNG"),
        Binding("f", "zoom", "Zoom"),
        Binding("z", "smoothing", "Smooth"),
        Binding("w", "window", "Window"),
        Binding("y", "log_scale", "Log y"),
        Binding("t", "x_axis", "Steps/time"),
        Binding("m", "changes", "Changes"),
        Binding("v", "expand_log", "Log lines"),
        Binding("x", "stop_run", "Stop run"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("q", "quit", "Quit"),
    ]

    CONTROL_ACTIONS = frozenset({"pause", "checkpoint", "learning_rates", "edit", "stop_run"})
    """Actions that send a command to the trainer."""

    def __init__(self, drain: Drain, controller: Any | None, *, attached: bool = False,
                 title: str = "gantui", poll_hz: float = 10.0, plot_hz: float = 2.0,
                 window: int = 200, can_steer: Callable[[], bool] | None = None,
                 graphics: Graphics | None = None, history: bool = False,
                 beside: Callable[[], list[Notice]] | None = None) -> None:
        """
        Args:
            drain: Returns the events that arrived since the last call; polled on a timer
                in the UI thread (e.g. ``session.queue.drain``).
            controller: Has ``pause``, ``resume``, ``checkpoint``, ``stop`` and ``set``
                returning futures (a :class:`~gantui.engine.control.Controller` or a remote one);
                None for a read-only dashboard.
            attached: Watching a run owned by another process: ``q`` detaches without
                stopping and ``x`` stops the run. Otherwise ``q`` offers to stop it.
            title: Window title.
            poll_hz: How often the event queue is drained.
            plot_hz: Most redraws per second of charts, preview and status (a state change
                redraws at once).
            window: Metric records in the recent window (``w``).
            can_steer: For a run in another process: True while a process owns it and
                answers on its control socket (checked about once a second), so the keys
                appear when a watched run starts or restarts and go when it dies.
            graphics: How sample grids are drawn; None: decided when the app starts
                (:func:`gantui.ui.graphics.detect`: ``GANTUI_GRAPHICS``, then what the
                terminal supports).
            history: The first drain replays the run's history (``gantui watch``): it raises
                no desktop notification.
            beside: Called at every poll for the notices of runs followed beside this one,
                which this terminal tells as it tells the run's own (the compare view's other
                runs, while this one is focused).
        """
        super().__init__()
        self.drain = drain
        self.controller = controller
        self.attached = attached
        self.title = title
        self.poll_hz = poll_hz
        self.plot_interval = 1.0 / plot_hz
        self.window_size = window
        self.model = RunModel()
        self.smoothing = 0.0
        self.window: int | None = None
        self.log_scale = False
        """Loss and gradient charts on a log scale (``y``)."""
        self.wall_time = False
        """The charts' x axis in wall time instead of steps (``t``)."""
        self.stopping = False
        """True once the user confirmed a stop; the app exits when the run has ended."""
        self.pending: list[tuple[str, Future]] = []
        self._want_paused: bool | None = None
        self._plotted = -1  # metrics_version last handed to the charts
        self._last_view = 0.0  # monotonic time of the last redraw
        self._last_view_cpu = 0.0  # this thread's CPU time at the last redraw
        self._bindings_key: tuple = ()
        self._seen = (-1, -1)  # (info_version, image_version)
        self._system_seen = -1
        self.can_steer = can_steer
        self.steerable = can_steer is None
        """False while ``can_steer`` says no process answers for the run."""
        self._steer_checked = -1.0
        self._graphics_wanted = graphics
        self.notices = Notices()
        """Which events raise a desktop notification (:mod:`gantui.notify`)."""
        self._history = history
        self.beside = beside

    # ---- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        # Widgets are kept as attributes: queries would search whichever screen is on top.
        series = self.model.series
        self.status = StatusBar(id="status")
        self.plots = [
            MetricPlot([Line("loss_d", series["loss_d"], 208),
                        Line("loss_g", series["loss_g"], 39)], loggable=True, id="loss",
                       classes="panel"),
            MetricPlot([Line("D(x)", series["d_real"], 76),
                        Line("D(G(z))", series["d_fake"], 170)], id="dstats", classes="panel"),
        ]
        self.quality_plot = MetricPlot([Line("quality", series["quality"], 220),
                                        Line("best", series["quality_best"], 46)],
                                       id="quality", classes="panel")
        self.quality_plot.display = False  # until the first evaluation
        self.class_strip = ClassStrip(self.model, id="classes", classes="panel")
        self.grads = GradSparks(series["grad_g"], series["grad_d"], id="grads", classes="panel")
        self.preview = PreviewPanel(graphics=self.graphics, budget=UI_CPU_BUDGET, id="preview",
                                    classes="panel")
        self.hyper = HyperPanel(self.model, id="hyper", classes="panel")
        self.event_log = EventLog(id="log", classes="panel")
        self.extra_charts = Vertical(id="extra")  # a script's own values, a chart per name
        self.extra_plots: dict[str, MetricPlot] = {}
        self.extra_charts.display = False  # until a script logs a name of its own
        self.system = SystemPanel(self.model, id="system", classes="panel")
        self.system.display = False  # until the first sample
        yield self.status
        with Horizontal(id="body"):
            with Vertical(id="charts"):
                yield from self.plots
                yield self.quality_plot
                yield self.class_strip
                yield self.grads
                yield self.extra_charts
            with Vertical(id="side"):
                yield self.preview
                yield self.hyper
        with Horizontal(id="bottom"):  # side by side on wide terminals, stacked on short ones
            yield self.event_log
            yield self.system
        yield Footer()

    def on_mount(self) -> None:
        for plot in self.plots:
            plot.border_title = legend_markup(plot.lines)
        self.grads.border_title = "gradient norms"
        self.preview.border_title = "samples"
        self.preview.border_subtitle = self.graphics.label
        if problem := graphics_mod.setting_problem(os.environ):
            self.log_line(LogLine(0, "warning", f"{problem}: samples drawn as "
                                  f"{self.graphics.label}"))
        self.hyper.border_title = "live hyperparameters"
        self.event_log.border_title = "events"
        self.system.border_title = "system"
        self._last_view_cpu = time.thread_time()  # start-up work is not the views' cost
        self.set_interval(1.0 / self.poll_hz, self.poll)
        self.poll()

    # ---- the one way in: the timer -----------------------------------------------------------

    def poll(self) -> None:
        """Drain events, check command replies, refresh what changed. Runs in the UI thread."""
        if self._exit:  # exiting: leave the rest of the queue to the caller
            return
        try:
            events = self.drain()
        except Exception as exc:  # a follower or queue failing must not kill the dashboard
            events = []
            self.log_line(LogLine(self.model.step, "error", f"event source failed: {exc}"))
        for event in events:
            if isinstance(event, StateChanged):
                self._want_paused = None
            for line in self.model.apply(event):
                self.log_line(line)
            if isinstance(event, Alert):
                self.notify(safe(event.message), title="gantui", severity="warning",
                            timeout=8, markup=False)
            self._tell(event)
        self._history = False
        if self.beside is not None:
            try:
                for notice in self.beside():
                    write_notice(self, notice)
            except Exception as exc:  # noqa: BLE001 - the other runs must not kill this one's view
                self.log_line(LogLine(self.model.step, "error",
                                      f"following the other runs failed: {exc}"))
        self._check_replies()
        self._check_steerable()
        self._refresh_views()
        if self.stopping and self.model.ended:
            self.exit(Outcome("stop", self.model.state, self.model.step))

    def _tell(self, event: Event) -> None:
        """A desktop notification through the terminal (:func:`write_notice`) when the run
        finishes, crashes, stops on a non-finite loss or warns."""
        if self._history:
            self.notices.remember(event)
            return
        notice = self.notices.see(event)
        if notice is not None:
            write_notice(self, notice)

    def on_resize(self) -> None:
        self.graphics = graphics_mod.follow_window(self.graphics)  # a font change: new cell size

    def _check_steerable(self) -> None:
        if self.can_steer is None:
            return
        now = time.monotonic()
        if now - self._steer_checked < 1.0:
            return
        self._steer_checked = now
        try:
            steerable = bool(self.can_steer())
        except Exception:  # noqa: BLE001 - a check that fails means we cannot steer
            steerable = False
        if steerable != self.steerable:
            self.steerable = steerable
            self.refresh_bindings()

    def _check_replies(self) -> None:
        still = []
        for what, future in self.pending:
            if not future.done():
                still.append((what, future))
                continue
            exc = future.exception()
            if exc is not None:
                self.log_line(LogLine(self.model.step, "error", f"{what} failed: {exc}"))
                self.notify(safe(f"{what} failed: {exc}"), severity="error", markup=False)
        self.pending = still

    def _refresh_views(self) -> None:
        """Redraw what changed, at most ``plot_hz`` times a second (a state change at once),
        so a fast run's stream of metrics costs the trainer next to nothing."""
        model = self.model
        key = (model.state, self.stopping, isinstance(model.image, Preview),
               tuple(model.changed_at.items()))  # a retuned value shows at once
        urgent = key != self._bindings_key
        if urgent:
            self._bindings_key = key
            self.refresh_bindings()
        now = time.monotonic()
        if not urgent and not self._redraw_due(now):
            return
        self._last_view = now
        self._last_view_cpu = time.thread_time()
        if model.metrics_version != self._plotted:
            self._plotted = model.metrics_version
            self.replot()
        if (model.info_version, model.image_version) != self._seen:
            self._seen = (model.info_version, model.image_version)
            self.status.show(model, self.view_label())
            self.hyper.show()
            self.preview.show(model.image)
            self._show_quality()
        if model.system_version != self._system_seen:
            self._system_seen = model.system_version
            self.system.display = model.system is not None
            self.system.show()

    def _show_quality(self) -> None:
        """The quality chart appears with the first evaluation; its title names the metric,
        the latest value and the best one with its step (the best checkpoint's), then what
        says why (:func:`diagnosis_line`): the charts draw only their top border."""
        quality = self.model.quality
        if quality is None:
            return
        self.quality_plot.display = True
        self.screen.add_class("-quality")  # at 80x24 the quality chart takes the sparklines' rows
        now, best = self.quality_plot.lines
        title = legend_markup([
            Line(describe_value(quality.primary, quality.value), now.series, now.color),
            Line(f"best {format_value(quality.primary, quality.best_value)} "
                 f"@{quality.best_step}", best.series, best.color)])
        why = diagnosis_line(quality.values)
        self.quality_plot.border_title = title + (f" [dim]· {escape(why)}[/]" if why else "")
        self.class_strip.show()

    def _redraw_due(self, now: float) -> bool:
        return redraw_due(now, self._last_view, self._last_view_cpu, self.plot_interval)

    def _show_extra(self) -> None:
        """A chart for each name a script logged that the dashboard has no panel for; the GAN
        panels step aside while such a run logs nothing for them (a classifier)."""
        extra = self.model.extra
        for name in [n for n in extra if n not in self.extra_plots]:
            color = EXTRA_COLORS[len(self.extra_plots) % len(EXTRA_COLORS)]
            plot = MetricPlot([Line(name, extra[name], color)], classes="panel extra")
            plot.border_title = legend_markup(plot.lines)
            self.extra_plots[name] = plot
            self.extra_charts.mount(plot)
            self.extra_charts.display = True
        if extra:
            series = self.model.series
            for widget, names in ((self.plots[0], ("loss_d", "loss_g")),
                                  (self.plots[1], ("d_real", "d_fake")),
                                  (self.grads, ("grad_g", "grad_d"))):
                widget.display = any(len(series[n]) > series[n].nonfinite for n in names)

    def replot(self) -> None:
        """Hand the charts the current data version and view settings."""
        model = self.model
        version = model.metrics_version
        self._show_extra()
        xmap, unit = wall_clock(model.times) if self.wall_time else (None, "step")
        view = ChartView(log=self.log_scale, xmap=xmap, xunit=unit)
        for plot in (*self.plots, self.quality_plot, *self.extra_plots.values()):
            plot.replot(version, self.smoothing, self.window, view, model.marks)
            plot.border_subtitle = f"x: {unit}" + (" · log y" if self.log_scale
                                                   and plot.loggable else "")
        self.grads.replot(version, self.window, log=self.log_scale)
        self.grads.border_title = ("gradient norms (log scale)" if self.log_scale
                                   else "gradient norms")
        self.status.show(model, self.view_label())

    def view_label(self) -> str:
        """The smoothing, window, scale and x-axis settings, as shown in the status bar."""
        smooth = f"ema {self.smoothing:g}" if self.smoothing else "raw"
        window = f"last {self.window}" if self.window else "all"
        extra = (" · log" if self.log_scale else "") + (" · time" if self.wall_time else "")
        return f"{smooth} · {window}{extra}"

    def log_line(self, line: LogLine) -> None:
        """Add a line to the event log."""
        self.event_log.add(line)

    # ---- keys --------------------------------------------------------------------------------

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in self.CONTROL_ACTIONS:
            if (self.controller is None or not self.model.live or self.stopping
                    or not self.steerable):
                return False
            if len(self.screen_stack) > 1:  # a dialog is open
                return False
            if action == "stop_run":
                return self.attached
            if action == "learning_rates":  # a script may have no lr_g/lr_d
                return {"lr_g", "lr_d"} <= self.model.hyperparameters().keys()
        if action == "save":
            return isinstance(self.model.image, Preview)
        if action == "zoom":
            return self.model.image is not None and len(self.screen_stack) == 1
        if action == "changes":
            return len(self.screen_stack) == 1
        return True

    def _send(self, what: str, future: Future) -> None:
        self.pending.append((what, future))

    def action_pause(self) -> None:
        """Pause or resume, depending on what was last asked for or reported."""
        paused = self._want_paused
        if paused is None:
            paused = self.model.state == "paused"
        if paused:
            self._send("resume", self.controller.resume(source="ui"))
        else:
            self._send("pause", self.controller.pause(source="ui"))
        self._want_paused = not paused

    def action_checkpoint(self) -> None:
        """Write a checkpoint between the next two steps."""
        self._send("checkpoint", self.controller.checkpoint(source="ui"))
        self.log_line(LogLine(self.model.step, "info", "checkpoint requested"))

    def action_learning_rates(self) -> None:
        """Open the learning-rate dialog."""
        values = {key: str(self.model.config.get(key, "")) for key in ("lr_g", "lr_d")}
        self.push_screen(FieldsModal("Learning rates (applied between steps)", values,
                                     self.validate_changes), self.apply_changes)

    def action_edit(self) -> None:
        """Open the dialog for any live hyperparameter."""
        values = {key: str(value) for key, value in self.model.hyperparameters().items()}
        spec = self._script_spec()
        docs = {key: spec[key].describe() if spec is not None and key in spec
                else config_mod.field_doc(key) for key in values}
        self.push_screen(KeyValueModal("Live hyperparameters (applied between steps)", values,
                                       self.validate_changes, docs), self.apply_changes)

    def validate_changes(self, raw: dict[str, str]) -> dict[str, Any]:
        """Type- and range-check edited values against the run's config; keep real changes.

        Raises:
            GantuiError: the first invalid key or value, in one line.
        """
        return checked_changes(self.model, raw)

    def _script_spec(self) -> Spec | None:
        """The live values a script declared, None for a ``gantui train`` run."""
        if self.model.live_spec is None:
            return None
        return spec_from_json(self.model.live_spec)

    def apply_changes(self, changes: dict[str, Any] | None) -> None:
        """Send validated changes (a dialog's result) to the trainer."""
        if changes is None:
            return
        if not changes:
            self.notify("nothing changed")
            return
        if self.controller is None or not self.model.live:
            self.notify("the run no longer accepts changes", severity="warning")
            return
        try:
            future = self.controller.set(changes, source="ui")
        except GantuiError as exc:
            self.notify(safe(exc), severity="error", markup=False)
            return
        self._send("set " + ", ".join(changes), future)
        text = ", ".join(f"{k}={v}" for k, v in changes.items())
        self.log_line(LogLine(self.model.step, "info", f"requested {text}"))

    def action_save(self) -> None:
        """Save the current preview grid as a PNG (the run's samples/ folder, or here)."""
        image = self.model.image
        if not isinstance(image, Preview):
            return
        folder = Path(self.model.run_dir) / "samples" if self.model.run_dir else Path.cwd()
        try:
            path = save_png(image, folder)
        except OSError as exc:
            self.notify(safe(f"could not save the preview: {exc}"), severity="error",
                        markup=False)
            return
        self.log_line(LogLine(image.step, "checkpoint", f"saved preview: {path}"))
        self.notify(safe(f"saved {path}"), markup=False)

    def action_zoom(self) -> None:
        """The current grid full-screen; earlier grids of the run a key away."""
        from gantui.ui.zoom import ZoomScreen

        model = self.model
        quality = model.quality
        shown = describe_value(quality.primary, quality.value) if quality is not None else ""
        n_classes = model.config.get("n_classes", 10)
        names = model.config.get("class_names") or ()
        self.push_screen(ZoomScreen(
            model.image, model.run_dir,
            conditional=model.config.get("conditioning", "none") != "none",
            n_classes=n_classes if isinstance(n_classes, int) else 10, quality=shown,
            class_names=tuple(safe(n, 40) for n in names) if isinstance(names, list) else ()))

    def action_smoothing(self) -> None:
        """Cycle the EMA smoothing of the plots."""
        levels = SMOOTHING_LEVELS
        index = levels.index(self.smoothing) if self.smoothing in levels else 0
        self.smoothing = levels[(index + 1) % len(levels)]
        self.replot()

    def action_window(self) -> None:
        """Switch the plots between the whole run and the recent window."""
        self.window = None if self.window else self.window_size
        self.replot()

    def action_log_scale(self) -> None:
        """Switch the loss and gradient charts between a linear and a log scale."""
        self.log_scale = not self.log_scale
        self.replot()

    def action_x_axis(self) -> None:
        """Switch the charts' x axis between steps and wall time."""
        self.wall_time = not self.wall_time
        self.replot()

    def action_expand_log(self) -> None:
        """Show a few more lines of the event log, or back to a few."""
        self.event_log.toggle_class("-expanded")

    def action_changes(self) -> None:
        """List every change marked on the charts, newest first."""
        self._show_changes(self.model.marks, "all changes")

    def on_metric_plot_clicked(self, message: MetricPlot.Clicked) -> None:
        """A click on a chart lists the changes drawn near it."""
        if len(self.screen_stack) > 1:
            return
        if not message.marks:
            self.notify("no change marked near there (m lists them all)")
            return
        self._show_changes(message.marks, "changes near the click")

    def _show_changes(self, marks: list, what: str) -> None:
        if not marks:
            self.notify("no changes yet")
            return
        self.push_screen(ChangesModal(f"{len(marks)} {what}, newest first", marks_text(marks)))

    def action_help(self) -> None:
        """Show the keys and how to read the dashboard."""
        keys = [(b.key_display or b.key, b.description, bool(self.check_action(b.action, ())))
                for b in self.BINDINGS]
        drawn = (f"Samples: drawn as {self.graphics.label} ({self.graphics.reason}); "
                 f"{graphics_mod.ENV_VAR}=auto|kitty|sixel|halfblock chooses.")
        self.push_screen(HelpModal(keys, f"{HELP_NOTES}\n{drawn}"))

    async def action_quit(self) -> None:
        """Leave. A live run is stopped (after asking) unless we are only watching it."""
        model = self.model
        if self.controller is None or not model.live:
            self.exit(Outcome("quit", model.state, model.step))
        elif self.attached:
            self.exit(Outcome("detach", model.state, model.step))
        elif self.stopping:  # already stopping; the user does not want to wait any more
            self.exit(Outcome("stop", model.state, model.step))
        else:
            self.push_screen(ChoiceModal(
                "Stop the run? A checkpoint is written first.",
                [("s", "Checkpoint and stop", "stop"),
                 ("d", "Keep training, no dashboard", "detach"),
                 ("n", "Cancel", "cancel")]), self._quit_answer)

    def action_stop_run(self) -> None:
        """Stop a run we are only watching (after asking)."""
        self.push_screen(ChoiceModal("Stop the run? A checkpoint is written first.",
                                     [("s", "Checkpoint and stop", "stop"),
                                      ("n", "Cancel", "cancel")]), self._quit_answer)

    def _quit_answer(self, answer: str | None) -> None:
        model = self.model
        if answer == "detach":
            self.exit(Outcome("detach", model.state, model.step))
        elif answer == "stop":
            self.stopping = True
            self._send("stop", self.controller.stop(source="ui"))
            self.log_line(LogLine(model.step, "info",
                                  "stopping: checkpoint, then end (q again: don't wait)"))
            self.refresh_bindings()
