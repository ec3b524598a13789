"""The event stream: what the trainer says, as small frozen dataclasses of plain values.

Every consumer (the dashboard, the headless printer, the run directory follower, tests) sees
the same events. :class:`EventQueue` is the bounded, never-blocking channel between the
training thread and a consumer that drains it on its own schedule.
"""

from __future__ import annotations

import collections
import threading
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
    """Generated 2-D points (``ring8``) with the true mode centres and coverage stats."""

    step: int
    points: tuple[tuple[float, float], ...]
    modes: tuple[tuple[float, float], ...]
    modes_covered: int
    high_quality: float


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
    ``nonfinite``, ``collapse``, ``data`` or ``control``."""

    step: int
    kind: str
    message: str


@dataclass(frozen=True)
class Note:
    """A lifecycle line worth showing (data source, resume point, skipped files...)."""

    step: int
    message: str


Event = (RunStarted | Metrics | Preview | Points | Changed | Checkpointed | StateChanged | Alert
         | Note)
Emit = Callable[[Event], None]

_NAMES: dict[type, str] = {
    RunStarted: "start",
    Metrics: "metrics",
    Preview: "preview",
    Points: "points",
    Changed: "set",
    Checkpointed: "checkpoint",
    StateChanged: "state",
    Alert: "alert",
    Note: "note",
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
    """Rebuild an event from :func:`to_record` output; unknown or malformed records give None."""
    cls = _TYPES.get(record.get("event", ""))
    if cls is None:
        return None
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in record.items() if k in names}
    for key in ("points", "modes"):
        if key in values:
            values[key] = tuple(tuple(p) for p in values[key])
    try:
        return cls(**values)
    except TypeError:
        return None


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
