"""Turns a run directory, written by any process, back into the trainer's event stream.

``gantui watch`` feeds the dashboard from :class:`RunFollower` instead of a live trainer, so a
run started elsewhere (headless, under nohup, with its own dashboard, or long finished) looks
the same as a run started here. The follower only reads: it never locks, writes or blocks the
run, and it expects files to be mid-write at any moment.

```
events.jsonl   ─► RunStarted, Changed, Checkpointed, StateChanged, Alert, Note (from_record)
metrics.jsonl  ─► Metrics (records without the "event" key)
quality.jsonl  ─► Quality
system.jsonl   ─► System (only the newest record of each drain: it is a gauge, not history)
samples/*.png  ─► Preview of the newest grid, downsampled
```

Torch is not imported here: watching must start fast and stay light.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gantui import events as ev
from gantui.config import POINT_SETS
from gantui.files import (
    MAX_INT,
    as_float,
    as_int,
    open_regular,
    parse_record,
    read_json_dict,
    read_toml_dict,
)
from gantui.text import safe

CHUNK_BYTES = 4 << 20
"""How much of a journal is read per system call; bounds memory on a huge first drain."""
FINGERPRINT_BYTES = 64
"""Bytes before the read offset remembered to notice a file rewritten in place."""
RECENT_DIR_S = 2.0
"""A samples folder modified this recently is rescanned even if its mtime did not move
(filesystems with coarse timestamps)."""

SAMPLE_NAME = re.compile(r"^step-(\d{8,18})\.png$")
"""A stored grid's name: the trainer writes ``step-%08d.png``; longer digit runs than a step
can have are someone else's file."""
_METRIC_FIELDS = tuple(f.name for f in dataclasses.fields(ev.Metrics))
_METRIC_KEYS = frozenset(_METRIC_FIELDS)
_INT_FIELDS = frozenset({"step", "epoch"})
_FLOAT_FIELDS = tuple(name for name in _METRIC_FIELDS if name not in _INT_FIELDS)
_OPTIONAL_KEYS = frozenset(ev.OPTIONAL_METRICS)
"""Fields the trainer records only when they apply."""
_PLAIN_KEYS = _METRIC_KEYS - _OPTIONAL_KEYS


def _trainer_keys(record: dict[str, Any]) -> bool:
    """True when ``record`` has exactly the keys the trainer writes (with or without the
    optional ones): no script's own names among them."""
    return _PLAIN_KEYS <= record.keys() <= _METRIC_KEYS
_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "F"})


class _Tail:
    """The complete lines appended to one file since the last read.

    Remembers the byte offset read so far, the file's identity and the bytes just before the
    offset, so that a file replaced (new inode), truncated (shorter) or rewritten in place
    (different bytes at the old end) is noticed and reported as a restart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.identity: tuple[int, int] | None = None
        self.fingerprint = b""
        self.partial = b""

    def reset(self) -> None:
        """Forget everything read: the next read starts at the first byte."""
        self.offset = 0
        self.identity = None
        self.fingerprint = b""
        self.partial = b""

    def poll(self) -> str:
        """``"same"`` when nothing new is there (or no file yet), ``"grown"`` when bytes were
        appended, ``"restart"`` when the file was replaced, truncated or rewritten."""
        try:
            st = os.stat(self.path)
        except OSError:  # not written yet, or being replaced right now
            return "same"
        if self.identity is not None and (st.st_dev, st.st_ino) != self.identity:
            return "restart"
        if st.st_size < self.offset:
            return "restart"
        if st.st_size == self.offset:
            return "same"
        return "restart" if self._rewritten() else "grown"

    def lines(self) -> Iterator[bytes]:
        """Yield each complete line past the offset, advancing it as it goes.

        A trailing line without its newline is held back until the rest arrives, unless it
        already parses as a whole JSON object (a writer that omits the final newline).
        """
        try:
            fh = open_regular(self.path)
        except OSError:
            return
        with fh:
            st = os.fstat(fh.fileno())
            if self.identity is not None and (st.st_dev, st.st_ino) != self.identity:
                return  # replaced since poll(): the next poll() says restart
            self.identity = (st.st_dev, st.st_ino)
            fh.seek(self.offset)
            while True:
                chunk = fh.read(CHUNK_BYTES)
                if not chunk:
                    break
                self.offset += len(chunk)
                self._remember(chunk)
                data = self.partial + chunk if self.partial else chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    self.partial = data
                    continue
                self.partial = data[cut + 1:]
                yield from data[:cut].split(b"\n")
        if self.partial and _parses_as_object(self.partial):
            line, self.partial = self.partial, b""
            yield line

    def _remember(self, chunk: bytes) -> None:
        if len(chunk) >= FINGERPRINT_BYTES:
            self.fingerprint = chunk[-FINGERPRINT_BYTES:]
        else:
            self.fingerprint = (self.fingerprint + chunk)[-FINGERPRINT_BYTES:]

    def _rewritten(self) -> bool:
        """True when the bytes just before the offset are no longer what was read there."""
        if not self.fingerprint:
            return False
        try:
            with open_regular(self.path) as fh:
                fh.seek(self.offset - len(self.fingerprint))
                return fh.read(len(self.fingerprint)) != self.fingerprint
        except OSError:
            return False


def _parses_as_object(line: bytes) -> bool:
    # A JSON object cut short never parses: only a complete record missing its newline does.
    return parse_record(line) is not None


def _records(tail: _Tail) -> Iterator[dict[str, Any]]:
    """The JSON objects among ``tail``'s new lines; blank, torn or foreign lines are skipped."""
    for line in tail.lines():
        record = parse_record(line)  # None for a torn line, or bytes that are not UTF-8 JSON
        if record is not None:
            yield record


def metrics_from_record(record: dict[str, Any]) -> ev.Metrics | None:
    """Rebuild :class:`~gantui.events.Metrics` from a ``metrics.jsonl`` record.

    Extra keys are ignored; a missing or non-numeric value becomes NaN (``epoch``: 0). A
    record without an integral ``step`` gives None.
    """
    if (_trainer_keys(record)
            and all(type(record.get(k, 0.0)) is float for k in _FLOAT_FIELDS)
            and all(type(record[k]) is int and 0 <= record[k] <= MAX_INT for k in _INT_FIELDS)):
        return ev.Metrics(**record)  # the trainer's own records: no per-field work
    step = as_int(record.get("step"))
    if step is None:
        return None
    values: dict[str, Any] = {"step": step, "epoch": as_int(record.get("epoch")) or 0}
    for name in _METRIC_FIELDS:
        if name not in _INT_FIELDS and not (name in _OPTIONAL_KEYS and name not in record):
            values[name] = _as_float(record.get(name))
    return ev.Metrics(**values)


MAX_SCALARS = 64
"""Most names of a script's own values taken from one record (a hostile file could hold
thousands)."""


def scalars_from_record(record: dict[str, Any], step: int) -> ev.Scalars | None:
    """The numbers of a ``metrics.jsonl`` record under names :class:`~gantui.events.Metrics`
    lacks (a script's own, :mod:`gantui.api`), or None when there are none."""
    values = {}
    for key, value in record.items():
        if key in _METRIC_KEYS:
            continue
        number = as_float(value)
        if number is not None:
            values[safe(key, 40)] = number
            if len(values) >= MAX_SCALARS:
                break
    return ev.Scalars(step, values) if values else None


def _as_float(value: Any) -> float:
    number = as_float(value)
    return math.nan if number is None else number


def grid_nrow(config: dict[str, Any]) -> int:
    """Samples per grid row, as the trainer lays out the fixed-noise grid; 1 when unknown and
    for 2-D points (``ring8``, ``grid25``), whose PNG is one scatter plot rather than a grid."""
    n = as_int(config.get("n_samples"))
    if n is None or n < 1 or config.get("dataset") in POINT_SETS:
        return 1
    if config.get("conditioning", "none") != "none":
        classes = as_int(config.get("n_classes"))
        return max(1, n // classes) if classes and classes > 0 else 1
    codes = as_int(config.get("info_codes"))
    if not codes and config.get("dataset") != "stacked_mnist":  # stacked: a code per channel
        codes = as_int(config.get("clusters"))
    if codes is not None and 2 <= codes and 2 * codes <= n:  # a row per code value
        return n // codes
    return max(1, round(math.sqrt(n)))


def decode_preview(path: Path, step: int, nrow: int, max_side: int) -> ev.Preview | None:
    """Read a sample PNG as a :class:`~gantui.events.Preview`, its longer side shrunk to at
    most ``max_side`` with a box (area) filter; None when the file is not a readable image."""
    from PIL import Image  # Pillow only when there is a picture to show

    try:
        with open_regular(path) as fh, Image.open(fh) as image:
            image.load()
            mode = "L" if image.mode in _GREY_MODES else "RGB"
            picture = image if image.mode == mode else image.convert(mode)
    except Exception:  # noqa: BLE001 - decoders raise many types on hostile bytes
        return None
    width, height = picture.size
    scale = max_side / max(width, height)
    if scale < 1:
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        picture = picture.resize(size, Image.Resampling.BOX)
        width, height = size
    return ev.Preview(step=step, pixels=picture.tobytes(), height=height, width=width,
                      channels=1 if mode == "L" else 3, nrow=nrow, diversity=math.nan)


class RunFollower:
    """Replays a run directory as events, then follows what is appended to it.

    The first :meth:`drain` gives the history: the latest :class:`~gantui.events.RunStarted`
    first, then every metric and journal entry in step order, and a preview of the newest
    sample grid. Later drains give only what was written since. When a journal is replaced,
    truncated or rewritten, the follower starts over and replays the history again.

    Args:
        run_dir: the run directory (it need not exist yet).
        preview_max_side: previews are shrunk so their longer side is at most this.
    """

    def __init__(self, run_dir: Path, preview_max_side: int = 256) -> None:
        self.run_dir = Path(run_dir)
        self.preview_max_side = preview_max_side
        self._metrics = _Tail(self.run_dir / "metrics.jsonl")
        self._journal = _Tail(self.run_dir / "events.jsonl")
        self._quality = _Tail(self.run_dir / "quality.jsonl")
        self._system = _Tail(self.run_dir / "system.jsonl")
        self._started = False
        self._config: dict[str, Any] | None = None
        self._samples_mtime: int | None = None
        self._sample_seen: tuple[str, int, int, int] | None = None

    def _start_over(self) -> None:
        for tail in (self._metrics, self._journal, self._quality, self._system):
            tail.reset()
        self._started = False
        self._config = None
        self._samples_mtime = None
        self._sample_seen = None

    def drain(self) -> list[ev.Event]:
        """Everything new since the last call, in the order the trainer emitted it.

        Cheap when nothing changed (a few ``stat`` calls); never raises on missing, torn or
        half-written files.
        """
        tails = (self._metrics, self._journal, self._quality)
        status = [tail.poll() for tail in tails]
        if "restart" in status:
            self._start_over()
            status = [tail.poll() for tail in tails]
        metrics_status, journal_status, quality_status = status
        # The journal first: the trainer writes a step's metrics before its journal entries,
        # so metrics read afterwards are never older than the entries already in hand.
        journal = self._journal_events() if journal_status == "grown" else []
        if quality_status == "grown":
            journal = list(heapq.merge(journal, self._quality_events(), key=_step))
        metrics = self._metrics_events() if metrics_status == "grown" else []
        preview = self._new_preview()
        others = _insert_by_step(journal, preview) if preview is not None else journal
        first = self._first_run_started(others) if not self._started else None
        merged = _merge_by_step(metrics, others)
        system = self._system_event()
        if system is not None:
            merged.append(system)
        return [first, *merged] if first is not None else merged

    def _system_event(self) -> ev.System | None:
        """The newest ``system.jsonl`` sample written since the last drain, if any."""
        status = self._system.poll()
        if status == "restart":
            self._system.reset()
        elif status == "same":
            return None
        newest = None
        for record in _records(self._system):
            event = ev.from_record({**record, "event": "system"})
            if isinstance(event, ev.System):
                newest = event
        return newest

    # ---- journals ----------------------------------------------------------------------

    def _journal_events(self) -> list[ev.Event]:
        found: list[ev.Event] = []
        for record in _records(self._journal):
            event = ev.from_record(record)
            if event is None or isinstance(event, (ev.Metrics, ev.Preview, ev.Points)):
                continue  # not a journal entry: unknown, or written elsewhere by the trainer
            if isinstance(event, ev.RunStarted):
                event = dataclasses.replace(event, run_dir=str(self.run_dir))
                if event.resumed:
                    _undo_lost_changes(found, event.step)
            found.append(event)
        return found

    def _quality_events(self) -> list[ev.Quality]:
        found = []
        for record in _records(self._quality):
            event = ev.from_record({**record, "event": "quality"})
            if isinstance(event, ev.Quality):
                found.append(event)
        return found

    def _metrics_events(self) -> list[ev.Metrics | ev.Scalars]:
        found: list[ev.Metrics | ev.Scalars] = []
        for record in _records(self._metrics):
            metrics = metrics_from_record(record)
            if metrics is not None:
                found.append(metrics)
                if not _trainer_keys(record):  # a script's record: its own names too
                    scalars = scalars_from_record(record, metrics.step)
                    if scalars is not None:
                        found.append(scalars)
        return found

    def _first_run_started(self, journal: list[ev.Event]) -> ev.RunStarted | None:
        """The RunStarted to lead the history with, taken out of ``journal``: the latest one
        recorded (earlier ones are dropped), else one made from config.toml and run.json."""
        starts = [i for i, e in enumerate(journal) if isinstance(e, ev.RunStarted)]
        if starts:
            latest = journal[starts[-1]]
            for i in reversed(starts):
                del journal[i]
            self._started = True
            assert isinstance(latest, ev.RunStarted)
            return latest
        config = self._run_config()
        if not config:
            return None  # not a run yet (or not one at all): wait for its files
        owner = read_json_dict(self.run_dir / "run.json")
        self._started = True
        steps = as_int(config.get("steps")) or 0
        epochs = as_int(config.get("epochs")) or 0
        return ev.RunStarted(
            run_dir=str(self.run_dir), name=self.run_dir.name,
            preset=str(owner.get("preset") or config.get("preset") or "custom"),
            device=str(owner.get("device") or "?"), step=0,
            total_steps=steps if epochs <= 0 else 0, config=config, data_note="")

    def _run_config(self) -> dict[str, Any]:
        if not self._config:
            self._config = read_toml_dict(self.run_dir / "config.toml")
        return self._config

    # ---- samples -----------------------------------------------------------------------

    def _new_preview(self) -> ev.Preview | None:
        """A preview of the newest sample grid, if it is not the one shown last."""
        folder = self.run_dir / "samples"
        try:
            mtime = os.stat(folder).st_mtime_ns
        except OSError:
            return None
        recent = time.time() - mtime / 1e9 < RECENT_DIR_S
        if mtime == self._samples_mtime and not recent:
            return None
        self._samples_mtime = mtime
        newest: tuple[int, str] | None = None
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    match = SAMPLE_NAME.match(entry.name)
                    if match and (newest is None or (int(match[1]), entry.name) > newest):
                        newest = (int(match[1]), entry.name)
        except OSError:
            return None
        if newest is None:
            return None
        step, name = newest
        try:
            st = os.stat(folder / name)
        except OSError:
            return None
        seen = (name, st.st_ino, st.st_mtime_ns, st.st_size)
        if seen == self._sample_seen:
            return None
        self._sample_seen = seen  # a broken file is not retried until it changes
        nrow = grid_nrow(self._run_config())
        return decode_preview(folder / name, step, nrow, self.preview_max_side)


def _undo_lost_changes(found: list[ev.Event], resumed_at: int) -> None:
    """Live changes journaled after the checkpoint a run resumed from were lost with the
    crash: replayed as changes they would leave a value the run no longer has. They stay in
    the log as notes saying so."""
    for i, event in enumerate(found):
        if isinstance(event, ev.Changed) and event.step > resumed_at:
            found[i] = ev.Note(event.step, f"{event.key}: {event.old} → {event.new} at step "
                                           f"{event.step} was undone: the run resumed from "
                                           f"its checkpoint at step {resumed_at}")


def sample_files(run_dir: Path) -> list[tuple[int, Path]]:
    """The trainer's stored grids ``samples/step-XXXXXXXX.png`` as ``(step, path)``, by step."""
    try:
        entries = list((Path(run_dir) / "samples").iterdir())
    except OSError:
        return []
    found = []
    for path in entries:
        match = SAMPLE_NAME.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def _step(event: ev.Event) -> int:
    return event.step


def _insert_by_step(journal: list[ev.Event], preview: ev.Preview) -> list[ev.Event]:
    """``journal`` with ``preview`` before the first entry at or after its step (the trainer
    saves a grid before checkpointing at the same step)."""
    at = next((i for i, e in enumerate(journal) if e.step >= preview.step), len(journal))
    return [*journal[:at], preview, *journal[at:]]


def _merge_by_step(metrics: list[ev.Metrics | ev.Scalars],
                   others: list[ev.Event]) -> list[ev.Event]:
    """Interleave two streams by step, keeping each one's own order; at equal steps metrics
    come first, as the trainer logs before it samples or checkpoints. Linear time."""
    if not others:
        return list(metrics)
    merged: list[ev.Event] = []
    i, n = 0, len(metrics)
    for event in others:
        j = i
        while j < n and metrics[j].step <= event.step:
            j += 1
        merged.extend(metrics[i:j])
        merged.append(event)
        i = j
    merged.extend(metrics[i:])
    return merged
