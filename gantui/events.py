"""The event stream: what the trainer says, as small frozen dataclasses of plain values.

Every consumer (the dashboard, the headless printer, the run directory follower, tests) sees
the same events. :class:`EventQueue` is the bounded, never-blocking channel between the
training thread and a consumer that drains it on its own schedule.
"""

from __future__ import annotations

import collections
import threading
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

State = str
"""Run state: ``starting``, ``running``, ``paused``, ``checkpointing``, ``finished``,
``stopped`` or ``error``."""


@dataclass(frozen=True)
class RunStarted:
    """The run is set up and about to train (also sent on resume)."""

    run_dir: str
    name: str
    preset: str
    device: str
    step: int
    total_steps: int
    config: dict[str, Any]
    data_note: str
    resumed: bool = False


@dataclass(frozen=True)
class Metrics:
    """Averages over the last ``log_every`` steps, read from the device once per interval."""

    step: int
    epoch: int
    loss_d: float
    loss_g: float
    d_real: float
    d_fake: float
    d_fake_g: float
    grad_g: float
    grad_d: float
    lr_g: float
    lr_d: float
    img_per_s: float
    eta_s: float
    time: float
    data_wait: float = float("nan")
    """Share of the interval's training time spent waiting for batches (0-1; NaN: not
    recorded, as in runs from before it was)."""
    info_acc: float = float("nan")
    """InfoGAN (``info_codes``): the share of G's samples whose categorical code Q read
    right over the interval; AC-GAN (``ac_weight``): the share whose class its classifier
    read as the one asked for (NaN: neither)."""
    aug_p: float = float("nan")
    """The chance each of DiffAugment's augmentations was applied with at the interval's end
    (``diffaug_p``, or adapted by ``ada_target``; NaN: every image augmented, or none)."""


OPTIONAL_METRICS = ("info_acc", "aug_p")
""":class:`Metrics` fields recorded only where they apply (NaN: left out of the record):
``info_acc`` in InfoGAN and AC-GAN runs, ``aug_p`` where ``diffaug``'s chance is not simply 1."""


@dataclass(frozen=True)
class Preview:
    """The fixed-noise grid, downsampled to at most 256 px a side, as row-major uint8 bytes
    of shape ``(height, width, channels)``. ``nrow`` samples per grid row; conditional runs
    have a row per class."""

    step: int
    pixels: bytes
    height: int
    width: int
    channels: int
    nrow: int
    diversity: float


@dataclass(frozen=True)
class Points:
    """Generated 2-D points (``ring8``, ``grid25``) with the true mode centres and coverage
    stats."""

    step: int
    points: tuple[tuple[float, float], ...]
    modes: tuple[tuple[float, float], ...]
    modes_covered: int
    high_quality: float


@dataclass(frozen=True)
class Quality:
    """One evaluation of G (every ``eval_every`` steps): every measured value by name, the
    primary one, and the best primary value so far with its step. Recorded in
    ``quality.jsonl``."""

    step: int
    values: dict[str, float]
    primary: str
    best_step: int
    best_value: float
    seconds: float

    @property
    def value(self) -> float:
        """The primary metric's value."""
        return self.values.get(self.primary, float("nan"))


@dataclass(frozen=True)
class System:
    """Host and GPU load, sampled about once a second outside the trainer thread (see
    :mod:`gantui.system`) and recorded in ``system.jsonl`` every few seconds.

    Sizes are bytes; percentages 0-100; NaN where a value cannot be read. Each entry of
    ``gpus`` has ``index``, ``util``, ``mem_used``, ``mem_total``, ``temp`` (C), ``power`` and
    ``power_limit`` (W) and ``process_mem`` (this process's memory on it).
    """

    step: int
    time: float
    cpu_percent: float
    """The whole machine's CPU use."""
    cpus: int
    """Logical CPUs."""
    process_cpu: float
    """This process's CPU use, in % of one core (200 = two cores busy)."""
    ram_used: float
    ram_total: float
    rss: float
    """This process's resident memory."""
    gpus: tuple[dict[str, float], ...] = ()
    gpu_names: tuple[str, ...] = ()
    gpu_note: str = ""
    """Why there is no GPU line (``no NVIDIA GPU``...), empty when ``gpus`` are shown."""


@dataclass(frozen=True)
class Changed:
    """A live hyperparameter changed between steps."""

    step: int
    key: str
    old: Any
    new: Any


@dataclass(frozen=True)
class Checkpointed:
    """A checkpoint was written (atomically)."""

    step: int
    path: str
    reason: str


@dataclass(frozen=True)
class StateChanged:
    """The run moved to ``state`` (see :data:`State`); ``message`` says why."""

    step: int
    state: State
    message: str = ""


@dataclass(frozen=True)
class Alert:
    """A health warning worded for a person. ``kind``: ``d_wins``, ``grad_explode``,
    ``nonfinite``, ``collapse``, ``quality``, ``overfit`` (D overfits its training images),
    ``data``, ``control``, ``disk`` (little free space left), ``notify`` (the notify command
    failed: :mod:`gantui.notify`) or ``error``."""

    step: int
    kind: str
    message: str


CRASHED = "training crashed: "
"""How the ``error`` alert of a crashed training loop begins; the reason follows, and the
``error`` state that comes next carries the reason alone."""


@dataclass(frozen=True)
class Note:
    """A lifecycle line worth showing (data source, resume point, skipped files...)."""

    step: int
    message: str


@dataclass(frozen=True)
class Scalars:
    """Values a script logged under names of its own (:mod:`gantui.api`), averaged over a log
    interval; the names :class:`Metrics` has travel there instead. Read from
    ``metrics.jsonl``; each name gets a chart of its own."""

    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class LiveSpec:
    """The live values a script declared (:mod:`gantui.api`): ``{name: [kind, low, high,
    *choices]}`` (see :mod:`gantui.live`) and their current ``values``."""

    step: int
    keys: dict[str, Any]
    values: dict[str, Any]


Event = (RunStarted | Metrics | Preview | Points | Quality | System | Changed | Checkpointed
         | StateChanged | Alert | Note | Scalars | LiveSpec)
Emit = Callable[[Event], None]

_NAMES: dict[type, str] = {
    RunStarted: "start",
    Metrics: "metrics",
    Preview: "preview",
    Points: "points",
    Quality: "quality",
    System: "system",
    Changed: "set",
    Checkpointed: "checkpoint",
    StateChanged: "state",
    Alert: "alert",
    Note: "note",
    Scalars: "scalars",
    LiveSpec: "live",
}
_TYPES = {name: cls for cls, name in _NAMES.items()}


def event_name(event: Event) -> str:
    """The ``event`` field used for this event in ``events.jsonl``."""
    return _NAMES[type(event)]


def to_record(event: Event) -> dict[str, Any]:
    """A JSON-ready dict: ``{"event": name, "step": ..., ...fields}``."""
    record = {"event": event_name(event)}
    record.update(asdict(event))
    return record


def from_record(record: dict[str, Any]) -> Event | None:
    """Rebuild an event from :func:`to_record` output; unknown or malformed records give None.

    Every field is checked against its declared type (a journal may hold anything): ints must
    be ints (not bools), floats may be any number, strings strings, ``config`` an object of
    plain values (and tables of them, one deep), point lists pairs of numbers. ``old``/``new``
    of a change may be any plain value.
    """
    cls = _TYPES.get(record.get("event", ""))
    if cls is None:
        return None
    values: dict[str, Any] = {}
    for f in fields(cls):
        if f.name not in record:
            continue
        value = _checked(_HINTS[cls][f.name], record[f.name])
        if value is _BAD:
            return None
        values[f.name] = value
    try:
        return cls(**values)
    except TypeError:  # a required field missing
        return None



CHANGE_KINDS = ("set", "pause", "resume", "restart", "checkpoint", "warning")
"""What :func:`change_kind` calls a change: a live ``set``, a pause, a resume (from a pause),
a resumed run (``start`` with ``resumed``, after a crash or a stop), a checkpoint written, a
health warning (an ``alert``)."""


def change_kind(record: dict[str, Any]) -> str | None:
    """The one rule for which journaled events are *changes*, marked on a run's curves (the
    dashboard's charts draw every kind; the report's figures draw the ``set`` ones).

    Args:
        record: a journal record (``events.jsonl``, see :func:`to_record`), or an event's
            fields with its ``event`` name (:func:`event_change_kind`).

    Returns:
        One of :data:`CHANGE_KINDS`, or None for anything else (metrics, notes, the first
        ``running``, the short-lived ``checkpointing`` state, a malformed record).
    """
    name = record.get("event")
    if name == "set":
        return "set" if isinstance(record.get("key"), str) else None
    if name == "checkpoint":
        return "checkpoint"
    if name == "alert":
        return "warning"
    if name == "start":
        return "restart" if record.get("resumed") is True else None
    if name == "state":
        state, message = record.get("state"), record.get("message")
        if state == "paused":
            return "pause"
        if state == "running" and isinstance(message, str) and message.startswith("resumed"):
            return "resume"
    return None


def event_change_kind(event: Event) -> str | None:
    """:func:`change_kind` of an event as it arrives (without building its record)."""
    return change_kind({"event": _NAMES.get(type(event)), **vars(event)})


_BAD = object()
_HINTS = {cls: typing.get_type_hints(cls) for cls in _TYPES.values()}
_PLAIN = (str, int, float, bool, type(None))


def _plain_value(value: Any) -> bool:
    """A plain value, or a list of them."""
    return isinstance(value, _PLAIN) or (isinstance(value, list) and all(
        isinstance(i, _PLAIN) for i in value))


def _checked(hint: Any, value: Any) -> Any:
    """``value`` if it fits ``hint`` (converted where harmless), else :data:`_BAD`."""
    if hint is int:
        ok = type(value) is int and -2**63 < value < 2**63
        return value if ok else _BAD
    if hint is float:
        if type(value) not in (int, float):
            return _BAD
        try:
            return float(value)
        except OverflowError:
            return _BAD
    if hint is str:
        return value if isinstance(value, str) else _BAD
    if hint is bool:
        return value if isinstance(value, bool) else _BAD
    if hint is bytes:
        return _BAD  # previews are never journaled
    if typing.get_origin(hint) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            return _BAD
        if typing.get_args(hint)[1] is float:  # quality values: numbers only
            numbers = {k: _checked(float, v) for k, v in value.items()}
            return _BAD if any(v is _BAD for v in numbers.values()) else numbers
        if not all(_plain_value(v) or (isinstance(v, dict) and all(  # one table deep:
                isinstance(k, str) and _plain_value(i) for k, i in v.items()))  # model_args
                for v in value.values()):
            return _BAD
        return value
    if typing.get_origin(hint) is tuple:  # point lists ((x, y), ...), GPU samples...
        args = typing.get_args(hint)
        if not isinstance(value, list):
            return _BAD
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_checked(args[0], item) for item in value]
        elif len(value) == len(args):
            items = [_checked(arg, item) for arg, item in zip(args, value, strict=True)]
        else:
            return _BAD
        return _BAD if any(item is _BAD for item in items) else tuple(items)
    return value if isinstance(value, _PLAIN) else _BAD  # Any: a changed value


class EventQueue:
    """A bounded channel that never blocks the producer.

    Previews and point clouds keep only the latest (a slow consumer skips stale images);
    every other event goes into a bounded FIFO that drops its oldest entries when full.
    ``put`` is the trainer's ``emit``; ``drain`` is called from the consumer's thread and
    returns events in the order they were put.
    """

    def __init__(self, maxlen: int = 10_000) -> None:
        self._events: collections.deque[tuple[int, Event]] = collections.deque(maxlen=maxlen)
        self._latest_image: tuple[int, Event] | None = None
        self._seq = 0
        self._lock = threading.Lock()
        self.dropped = 0
        """Events lost because the FIFO was full (previews replaced are not counted)."""

    def put(self, event: Event) -> None:
        """Add ``event`` without blocking."""
        with self._lock:
            self._seq += 1
            if isinstance(event, (Preview, Points)):
                self._latest_image = (self._seq, event)
                return
            if len(self._events) == self._events.maxlen:
                self.dropped += 1
            self._events.append((self._seq, event))

    def drain(self) -> list[Event]:
        """Everything queued since the last call, oldest first; only the latest preview."""
        with self._lock:
            items = list(self._events)
            self._events.clear()
            image, self._latest_image = self._latest_image, None
        if image is not None:
            at = next((i for i, (seq, _) in enumerate(items) if seq > image[0]), len(items))
            items.insert(at, image)
        return [event for _, event in items]
