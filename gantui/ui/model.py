"""What the dashboard knows about a run, folded from the event stream.

Plain Python (no Textual): :meth:`RunModel.apply` takes one event and returns the log lines it
produced, so the model can be tested and reused without a terminal.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

from gantui import config as config_mod
from gantui.config import LIVE_KEYS
from gantui.errors import GantuiError
from gantui.events import (
    Alert,
    Changed,
    Checkpointed,
    Event,
    LiveSpec,
    Metrics,
    Note,
    Points,
    Preview,
    Quality,
    RunStarted,
    Scalars,
    StateChanged,
    System,
    event_change_kind,
)
from gantui.history import Series
from gantui.live import parse_changes, spec_from_json
from gantui.quality.describe import shares_of
from gantui.text import duration, safe

LIVE_STATES = ("starting", "running", "paused", "checkpointing")
"""States in which the trainer still answers commands."""

ENDED_STATES = ("finished", "stopped", "error")
"""States after which the trainer thread is gone."""

OWNED = {"info_weight": "info_codes", "ac_weight": "ac_weight"}
"""Live weights of a network a run has only with a key on: offered only where it is."""

SERIES = ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g", "grad_g", "grad_d")
"""Metric fields kept as plottable histories."""


@dataclass(frozen=True)
class LogLine:
    """One line for the event log. ``level``: ``info``, ``change``, ``checkpoint``,
    ``warning`` or ``error``. ``text`` is made printable (:func:`gantui.text.safe`): it may
    come from a journal or a control request that anyone could have written."""

    step: int
    level: str
    text: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", safe(self.text))


@dataclass(frozen=True)
class Mark:
    """A change marked on the charts (:func:`gantui.events.change_kind`): its step, kind and
    the event log's words for it (printable)."""

    step: int
    kind: str
    text: str


@dataclass
class RunModel:
    """The dashboard's view of one run."""

    name: str = ""
    """Run name (the run directory's name)."""
    preset: str = ""
    """Preset the run was built from."""
    device: str = ""
    """Device the trainer runs on."""
    run_dir: str = ""
    """Run directory, empty until :class:`RunStarted` arrives."""
    total_steps: int = 0
    """Steps the run will train for."""
    step: int = 0
    """Latest step reported by any event."""
    epoch: int = 0
    """Latest epoch reported by :class:`Metrics`."""
    img_per_s: float = 0.0
    """Throughput over the last log interval."""
    data_wait: float = float("nan")
    """Share of the last log interval spent waiting for batches (NaN: not recorded)."""
    info_acc: float = float("nan")
    """InfoGAN: the share of codes Q read right over the last log interval (NaN: no code)."""
    aug_p: float = float("nan")
    """The chance of DiffAugment's augmentations at the last log (NaN: all images or none)."""
    system: System | None = None
    """The latest GPU/CPU/RAM sample."""
    system_version: int = 0
    """Bumped on every :class:`System` sample."""
    eta_s: float = 0.0
    """Estimated seconds to the end of the run."""
    state: str = "starting"
    """Latest run state."""
    state_message: str = ""
    """Why the state last changed."""
    config: dict[str, Any] = field(default_factory=dict)
    """The run's resolved config, with live changes applied."""
    series: dict[str, Series] = field(default_factory=lambda: {
        k: Series() for k in (*SERIES, "quality", "quality_best")})
    """Plottable metric histories by field name; ``quality`` is the primary quality metric
    of each evaluation and ``quality_best`` the best of it so far."""
    quality: Quality | None = None
    """The latest quality evaluation."""
    class_history: list[tuple[int, list[float]]] = field(default_factory=list)
    """``(step, share of samples in each class)`` of every evaluation that measured them
    (unconditional MNIST runs): the class heat strip."""
    image: Preview | Points | None = None
    """The latest preview grid or ring8 point cloud."""
    changed_at: dict[str, int] = field(default_factory=dict)
    """Step at which each live key last changed."""
    alerts: int = 0
    """How many health warnings arrived."""
    metrics_version: int = 0
    """Bumped on every :class:`Metrics`: plots redraw only when it moves."""
    image_version: int = 0
    """Bumped on every preview or point cloud."""
    info_version: int = 0
    """Bumped whenever the status bar or hyperparameter panel would change."""
    updated: float = field(default_factory=time.monotonic)
    """Monotonic time of the last event."""
    data_note: str = ""
    """Where the run's data comes from (the run start's note), shown once in the log."""
    extra: dict[str, Series] = field(default_factory=dict)
    """A script's own values (:mod:`gantui.api`) by name, in the order they first came; each
    gets a chart of its own."""
    live_spec: dict[str, Any] | None = None
    """The live values a script declared (``{name: [kind, low, high, *choices]}``, see
    :mod:`gantui.live`); None for a ``gantui train`` run, whose live keys are
    :data:`~gantui.config.LIVE_KEYS`."""
    marks: list[Mark] = field(default_factory=list)
    """Every change since the run (re)started, in arrival order, for the charts' markers."""
    times: Series = field(default_factory=Series)
    """Wall-clock time (seconds since the epoch) of each metrics record by step, for the
    charts' wall-time axis."""
    _notes_shown: set[str] = field(default_factory=set)

    @property
    def live(self) -> bool:
        """True while the trainer answers commands."""
        return self.state in LIVE_STATES

    @property
    def ended(self) -> bool:
        """True once the run reached ``finished``, ``stopped`` or ``error``."""
        return self.state in ENDED_STATES

    def hyperparameters(self) -> dict[str, Any]:
        """Current values of every live key (missing ones as None)."""
        keys = LIVE_KEYS if self.live_spec is None else self.live_spec
        return {key: self.config.get(key) for key in keys
                if self.live_spec is not None or key not in OWNED
                or self.config.get(OWNED[key])}  # InfoGAN's, AC-GAN's weight: only with Q

    def apply(self, event: Event) -> list[LogLine]:
        """Fold ``event`` into the model; return the log lines it produced."""
        self.updated = time.monotonic()
        step = getattr(event, "step", self.step)
        self.step = max(self.step, step) if not isinstance(event, RunStarted) else step
        if isinstance(event, Metrics):
            return self._metrics(event)
        if isinstance(event, (Preview, Points)):
            self.image = event
            self.image_version += 1
            return []
        if isinstance(event, Quality):
            return self._quality(event)
        if isinstance(event, System):
            self.system = event
            self.system_version += 1
            return []
        if isinstance(event, Scalars):
            for key, value in event.values.items():
                self.extra.setdefault(key, Series()).append(event.step, value)
            self.metrics_version += 1
            return []
        self.info_version += 1
        lines = self._other(event, step)
        kind = event_change_kind(event)
        if kind is not None:
            self.marks.append(Mark(step, kind, lines[0].text if lines else kind))
            self.metrics_version += 1  # the charts draw it
        return lines

    def _other(self, event: Event, step: int) -> list[LogLine]:
        if isinstance(event, LiveSpec):
            self.live_spec = dict(event.keys)
            self.config.update(event.values)
            return []
        if isinstance(event, RunStarted):
            return self._started(event)
        if isinstance(event, Changed):
            self.config[event.key] = event.new
            self.changed_at[event.key] = event.step
            old, new = hyperparameter_text(event.old), hyperparameter_text(event.new)
            return [LogLine(step, "change", f"{event.key}: {old} → {new} at step {step}")]
        if isinstance(event, Checkpointed):
            if event.reason.startswith("best "):  # one short line: it recurs while improving
                return [LogLine(step, "checkpoint", f"new best {event.reason[5:]}: kept in "
                                                    f"checkpoints/best.pt")]
            why = f" ({event.reason})" if event.reason else ""
            return [LogLine(step, "checkpoint", f"checkpoint at step {step}{why}: {event.path}")]
        if isinstance(event, StateChanged):
            previous, self.state = self.state, safe(event.state, 20)
            if "checkpointing" in (previous, event.state) and not event.message:
                return []  # the Checkpointed line says it better
            self.state_message = event.message
            level = "error" if event.state == "error" else "info"
            text = f"state: {event.state}" + (f" ({event.message})" if event.message else "")
            return [LogLine(step, level, text)]
        if isinstance(event, Alert):
            self.alerts += 1
            level = "error" if event.kind in ("nonfinite", "error") else "warning"
            return [LogLine(step, level, event.message)]
        if isinstance(event, Note):
            if event.message in self._notes_shown and event.message == self.data_note:
                return []  # the same data source again (a resume, a replay): said once
            self._notes_shown.add(event.message)
            return [LogLine(step, "info", event.message)]
        return []  # pragma: no cover - every event type is handled above

    def _started(self, event: RunStarted) -> list[LogLine]:
        self.name, self.preset = safe(event.name), safe(event.preset)
        self.device = safe(event.device)
        self.run_dir, self.total_steps = event.run_dir, event.total_steps
        self.config = dict(event.config)
        self.data_note = event.data_note
        # A (re)start replays history from here on (a follower starting over after a journal
        # was replaced): begin the plots afresh rather than drawing points twice.
        for series in (*self.series.values(), *self.extra.values()):  # in place: the
            series.clear()  # charts hold these objects
        self.class_history.clear()
        self.times.clear()
        self.marks.clear()
        self.metrics_version += 1
        verb = "resumed" if event.resumed else "started"
        # The data note also arrives as a Note event: not repeated here.
        return [LogLine(event.step, "info", f"run {event.name} {verb} at step {event.step} "
                                            f"({event.preset}, {event.device})")]

    def _quality(self, event: Quality) -> list[LogLine]:
        event = dataclasses.replace(event, primary=safe(event.primary, 30))
        if self.quality is not None and self.quality.primary != event.primary:
            self.series["quality"].clear()  # another yardstick (FID became available)
            self.series["quality_best"].clear()
        self.quality = event
        shares = shares_of(event.values)
        if shares:
            self.class_history.append((event.step, shares))
        self.series["quality"].append(event.step, event.value)
        self.series["quality_best"].append(event.step, event.best_value)
        self.metrics_version += 1
        self.info_version += 1
        return []

    def _metrics(self, m: Metrics) -> list[LogLine]:
        self.epoch, self.img_per_s, self.eta_s = m.epoch, m.img_per_s, m.eta_s
        self.data_wait, self.info_acc, self.aug_p = m.data_wait, m.info_acc, m.aug_p
        for key in SERIES:
            self.series[key].append(m.step, getattr(m, key))
        if math.isfinite(m.time):
            self.times.append(m.step, m.time)
        if not (math.isfinite(m.lr_g) and math.isfinite(m.lr_d)):
            pass  # a script's record without them (NaN): its live values say more
        elif self.config.get("lr_g") != m.lr_g or self.config.get("lr_d") != m.lr_d:
            self.config["lr_g"], self.config["lr_d"] = m.lr_g, m.lr_d
        self.metrics_version += 1
        self.info_version += 1
        return []


def checked_changes(model: RunModel, raw: dict[str, str]) -> dict[str, Any]:
    """Type- and range-check edited live values against ``model``'s run (a script's own
    declared bounds, else the trainer's config); keep the real changes.

    Raises:
        GantuiError: the first invalid key or value, in one line.
    """
    if model.live_spec is not None:  # a script's own live values (gantui.api): its own bounds
        typed = parse_changes(spec_from_json(model.live_spec),
                              {key: value.strip() for key, value in raw.items()})
        return {k: v for k, v in typed.items() if model.config.get(k) != v}
    typed = {key: config_mod.parse_live(key, value.strip()) for key, value in raw.items()}
    try:
        current = config_mod.from_dict(model.config)
    except (GantuiError, TypeError):
        current = config_mod.Config()
    current.replace(**typed)  # raises ConfigError on out-of-range values
    return {k: v for k, v in typed.items() if model.config.get(k) != v}


def hyperparameter_text(value: Any) -> str:
    """How the dashboard shows a hyperparameter value, compact and safe to draw (``None``:
    unknown)."""
    if value is None:
        return "?"
    if isinstance(value, float):
        return f"{value:.4g}"
    return safe(value, 40)


format_duration = duration
"""The one duration format, shared with the headless line (:func:`gantui.text.duration`)."""
