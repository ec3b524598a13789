"""What ``gantui runs`` lists: each run directory's preset, state, progress and last losses.

Everything is read from the run directory without loading it whole: the last metrics record
comes from the tail of ``metrics.jsonl``, the state from the last ``state`` record in
``events.jsonl``. Whether the owning process still lives is asked through an injected
``is_live(run_dir)`` (it talks to the run's control channel), so that a run whose journal says
``running`` but whose process is gone is reported as ``crashed``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantui.files import (
    as_float,
    as_int,
    open_regular,
    parse_record,
    read_json_dict,
    read_toml_dict,
    toml_readable,
)
from gantui.text import safe

ENDED_STATES = ("finished", "stopped", "error")
"""Journaled states after which the process is gone for good."""
TAIL_BLOCK = 64 << 10
"""Bytes read per step when scanning a journal backwards from its end."""


@dataclass(frozen=True)
class RunInfo:
    """One row of ``gantui runs``."""

    path: Path
    """The run directory."""
    name: str
    """The run's name (its directory name)."""
    preset: str
    """The preset it was started from (``?`` when unrecorded)."""
    state: str
    """``finished``, ``stopped``, ``error``, ``crashed``, a live state such as ``running``, or
    ``unreadable`` (its ``config.toml`` is not valid TOML)."""
    step: int
    """The step of the last metrics record (or of the last journal entry without metrics)."""
    total_steps: int
    """Steps the run was last started for (0 when unknown)."""
    loss_d: float | None
    """Discriminator loss in the last metrics record, None before the first one."""
    loss_g: float | None
    """Generator loss in the last metrics record, None before the first one."""
    updated: float
    """Modification time (epoch seconds) of the newest journal or metrics write."""
    pid: int | None
    """The owning process id from ``run.json``, if recorded."""
    quality: str = ""
    """The last quality evaluation's primary metric and value (``judge_fd 7.12``), with the
    best one when it was elsewhere; empty before the first evaluation."""


def _reverse_records(path: Path) -> Iterator[dict[str, Any]]:
    """JSON objects of a JSON-lines file from the last to the first, reading backwards
    :data:`TAIL_BLOCK` bytes at a time; torn or foreign lines are skipped. Reads no further
    than the caller asks for."""
    block = TAIL_BLOCK
    try:
        fh = open_regular(path)
    except OSError:
        return
    with fh:
        end = os.fstat(fh.fileno()).st_size
        rest = b""  # the start of a line whose beginning lies in an earlier block
        while end > 0:
            start = max(0, end - block)
            fh.seek(start)
            data = fh.read(end - start) + rest
            end = start
            lines = data.split(b"\n")
            rest = lines.pop(0) if start > 0 else b""
            for line in reversed(lines):
                record = parse_record(line)
                if record is not None:
                    yield record
        if rest:
            record = parse_record(rest)
            if record is not None:
                yield record


def _journal_summary(run_dir: Path) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The last ``state`` and last ``start`` records of ``events.jsonl`` (None if absent)."""
    state = start = None
    for record in _reverse_records(run_dir / "events.jsonl"):
        kind = record.get("event")
        if kind == "state" and state is None:
            state = record
        elif kind == "start" and start is None:
            start = record
        if state is not None and start is not None:
            break
    return state, start


def _state_from(last_state: dict[str, Any] | None, run_dir: Path,
                is_live: Callable[[Path], bool]) -> str:
    journaled = last_state.get("state") if last_state is not None else None
    if journaled in ENDED_STATES:
        return str(journaled)
    if not is_live(run_dir):
        return "crashed"
    return str(journaled) if isinstance(journaled, str) and journaled else "starting"


def run_state(run_dir: Path, is_live: Callable[[Path], bool]) -> str:
    """The run's state: the journaled ``finished``, ``stopped`` or ``error``; otherwise the
    journaled live state (``starting`` if none yet) when ``is_live(run_dir)``, else
    ``crashed`` (the journal says it runs but its process is gone)."""
    return _state_from(_journal_summary(run_dir)[0], run_dir, is_live)


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def read_run(run_dir: Path, is_live: Callable[[Path], bool]) -> RunInfo | None:
    """Summarise one run directory; None when it is not a run (no ``config.toml``).

    Unreadable or half-written files give unknown values, never an exception.
    """
    if not (run_dir / "config.toml").is_file():
        return None
    readable = toml_readable(run_dir / "config.toml")
    config = read_toml_dict(run_dir / "config.toml") if readable else {}
    owner = read_json_dict(run_dir / "run.json")
    last_state, last_start = _journal_summary(run_dir)
    last_metrics = next(_reverse_records(run_dir / "metrics.jsonl"), {})
    step = as_int(last_metrics.get("step"))
    if step is None:
        step = max((as_int(r.get("step")) or 0 for r in (last_state, last_start) if r), default=0)
    total = as_int((last_start or {}).get("total_steps"))
    if total is None:
        total = as_int(config.get("steps")) or 0
    written = [_mtime(run_dir / name) for name in ("events.jsonl", "metrics.jsonl",
                                                   "quality.jsonl")]
    written = [t for t in written if t is not None] or [_mtime(run_dir / "config.toml") or 0.0]
    preset = owner.get("preset") or config.get("preset") or "?"
    return RunInfo(
        path=run_dir, name=run_dir.name, preset=str(preset),
        state=_state_from(last_state, run_dir, is_live) if readable else "unreadable",
        step=step, total_steps=total,
        loss_d=as_float(last_metrics.get("loss_d")), loss_g=as_float(last_metrics.get("loss_g")),
        updated=max(written), pid=as_int(owner.get("pid")),
        quality=_quality(next(_reverse_records(run_dir / "quality.jsonl"), {})))


def _quality(record: dict[str, Any]) -> str:
    """``judge_fd=7.12`` (``,best=6.8@2000`` when the best was elsewhere) from a
    quality.jsonl record, without spaces so the table splits on them; "" when unusable."""
    primary, values = record.get("primary"), record.get("values")
    if not isinstance(primary, str) or not isinstance(values, dict):
        return ""
    value = as_float(values.get(primary))
    if value is None:
        return ""
    text = f"{primary}={_short(primary, value)}"
    best, at = as_float(record.get("best_value")), as_int(record.get("best_step"))
    if best is not None and at is not None and at != as_int(record.get("step")):
        text += f",best={_short(primary, best)}@{at}"
    return safe(text, 48).replace(" ", "_")


def _short(metric: str, value: float) -> str:
    if metric in ("hq", "cond_acc"):
        return f"{value:.1%}"
    return f"{value:g}" if metric == "modes" else f"{value:.3g}"


def scan_runs(runs_dir: Path, is_live: Callable[[Path], bool]) -> list[RunInfo]:
    """Every run directly under ``runs_dir``, most recently updated first.

    Folders without a ``config.toml`` are skipped; a missing ``runs_dir`` gives no runs.
    """
    try:
        children = [p for p in runs_dir.iterdir() if p.is_dir()]
    except OSError:
        return []
    runs = [info for info in (read_run(p, is_live) for p in children) if info is not None]
    return sorted(runs, key=lambda r: (r.updated, r.name), reverse=True)


def format_age(seconds: float) -> str:
    """``42s``, ``3m``, ``2h`` or ``5d``: the largest whole unit."""
    seconds = max(0.0, seconds) if math.isfinite(seconds) else 0.0
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def _loss(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_table(runs: list[RunInfo], now: float) -> str:
    """An aligned plain-text table, one run per line under a header:
    ``NAME PRESET STATE STEP LOSS_D LOSS_G QUALITY AGE`` (``STEP`` as ``step/total``)."""
    header = ("NAME", "PRESET", "STATE", "STEP", "LOSS_D", "LOSS_G", "QUALITY", "AGE")
    right = (False, False, False, True, True, True, False, True)
    rows = [header] + [
        (safe(r.name, 60), safe(r.preset, 30), safe(r.state, 20),
         f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step),
         _loss(r.loss_d), _loss(r.loss_g), r.quality or "-", format_age(now - r.updated))
        for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = []
    for row in rows:
        cells = [cell.rjust(w) if r else cell.ljust(w)
                 for cell, w, r in zip(row, widths, right, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)
