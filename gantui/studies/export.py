"""A run as TensorBoard event files: ``gantui export RUN --tensorboard DIR``.

Reads only the run directory (``config.toml``, ``metrics.jsonl``, ``quality.jsonl``,
``events.jsonl``, ``samples/``), and works on a live run too (what is there so far is
exported). This module needs no torch (tensorboardX loads it when it is installed). Writes
through the optional ``tensorboardX`` into ``DIR/<run name>/``, so several runs share one log
directory and ``tensorboard --logdir DIR`` compares them:

```
DIR/<run name>/events.out.tfevents.*
  loss/d loss/g D/real D/fake D/fake_g grad/g grad/d lr/g lr/d speed/...   scalars per log step
  quality/<name>                                                          scalars per evaluation
  samples                                                                 image per sample grid
  config                                   the config as a Markdown table (text), and hparams
  journal                                  live changes (``set`` in events.jsonl) at their step
```

Everything is written in step order. Exporting a run again replaces its earlier event files,
so nothing is counted twice.
"""

from __future__ import annotations

import bisect
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantui.errors import GantuiError
from gantui.files import as_float, as_int, open_regular, read_jsonl, read_toml_dict
from gantui.run.follow import sample_files
from gantui.text import safe

INSTALL_HINT = "TensorBoard export needs tensorboardX: pip install 'gantui[tensorboard]'"
"""The error when the optional dependency is missing."""

METRIC_TAGS = {
    "loss_d": "loss/d", "loss_g": "loss/g",
    "d_real": "D/real", "d_fake": "D/fake", "d_fake_g": "D/fake_g",
    "grad_g": "grad/g", "grad_d": "grad/d",
    "lr_g": "lr/g", "lr_d": "lr/d",
    "img_per_s": "speed/img_per_s", "eta_s": "speed/eta_s", "data_wait": "speed/data_wait",
    "info_acc": "info/q_reads", "aug_p": "augment/p",
}
"""TensorBoard tag of each ``metrics.jsonl`` field; another numeric field ``x`` goes to
``train/x``."""
NOT_SCALARS = frozenset({"step", "epoch", "time"})
"""``metrics.jsonl`` fields that are coordinates, not curves."""
EVENT_FILES = "events.out.tfevents.*"
"""The glob of the files tensorboardX writes (and a re-export replaces)."""
HPARAM_METRICS = ("loss/d", "loss/g")
"""Scalar tags shown as metrics in the HParams dashboard, besides every ``quality/<name>``."""

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
"""A field or metric name usable in a tag; foreign or hostile names are left out."""
_FLOAT32_MAX = 3.4028234663852886e38
"""Scalars are stored as float32: a larger magnitude would read back as infinity."""
_SCALAR, _IMAGE, _TEXT = 0, 1, 2


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_tensorboard` wrote."""

    path: Path
    """The run's folder in the log directory, ``DIR/<run name>``, holding its event file."""
    scalars: int
    """Scalar values written (training metrics and quality values)."""
    images: int
    """Sample grids written."""
    texts: int
    """Text summaries written: the config and one per step with live changes."""
    skipped: int = 0
    """Values left out because they were not finite (NaN, infinity) or beyond float32."""


@dataclass(frozen=True)
class _Item:
    """One event to write: scalars of one step, an image file or a text."""

    step: int
    kind: int
    walltime: float | None
    payload: Any
    """``[(tag, value)]`` for scalars, the PNG path for an image, ``(tag, text)`` for text."""


class _Clock:
    """Wall time at a step, interpolated from the ``time`` of the metrics records: samples,
    evaluations and journal entries carry a step but no time."""

    def __init__(self, points: list[tuple[int, float]]) -> None:
        points = sorted(dict(points).items())
        self.steps = [s for s, _ in points]
        self.times = [t for _, t in points]

    @property
    def last(self) -> float | None:
        """The latest wall time; None when no record has a time."""
        return self.times[-1] if self.times else None

    def at(self, step: int) -> float | None:
        """The wall time of ``step``; None when no record has a time."""
        if not self.steps:
            return None
        i = bisect.bisect_left(self.steps, step)
        if i == 0:
            return self.times[0]
        if i == len(self.steps):
            return self.times[-1]
        s0, s1, t0, t1 = self.steps[i - 1], self.steps[i], self.times[i - 1], self.times[i]
        return t0 + (t1 - t0) * (step - s0) / (s1 - s0)


def export_tensorboard(run_dir: Path, out_dir: Path) -> ExportResult:
    """Write one run as TensorBoard event files into ``out_dir/<run name>/``.

    Event files of an earlier export of the same run into the same ``out_dir`` are removed
    first; nothing else there is touched.

    Args:
        run_dir: a gantui run directory (it holds ``config.toml`` and ``metrics.jsonl``).
        out_dir: the TensorBoard log directory, created if missing.

    Returns:
        Where the run went and how much was written.

    Raises:
        GantuiError: ``run_dir`` is not a run or has no metrics yet, ``out_dir`` cannot be
            written, or tensorboardX is not installed.
    """
    run_dir = Path(run_dir)
    config, metrics = _read_run(run_dir)
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX.proto.summary_pb2 import Summary
        from tensorboardX.summary import hparams
    except ImportError:
        raise GantuiError(INSTALL_HINT) from None

    clock = _Clock([(s, t) for r in metrics
                    if (s := as_int(r.get("step"))) is not None and (t := _walltime(r))])
    items, skipped = _metric_items(metrics, clock)
    quality, quality_skipped = _quality_items(run_dir, clock)
    items += quality + _sample_items(run_dir, clock) + _journal_items(run_dir, clock)
    items.sort(key=lambda item: (item.step, item.kind))  # stable: file order within a step

    target = _prepare(Path(out_dir) / (run_dir.resolve().name or "run"))
    start = clock.at(0)
    tags = {tag for item in items if item.kind == _SCALAR for tag, _ in item.payload}
    experiment, session_start, session_end = hparams(
        _hparams(config), {t: 0.0 for t in sorted(tags) if _hparam_metric(t)})
    scalars = images = texts = 0
    try:
        writer = SummaryWriter(logdir=str(target), max_queue=100, flush_secs=30)
    except OSError as exc:
        raise GantuiError(f"cannot write to {safe(target)}: {exc.strerror or exc}") from None
    try:
        events = writer.file_writer
        events.add_summary(experiment, 0, start)
        events.add_summary(session_start, 0, start)
        writer.add_text("config", config_markdown(config), 0, start)
        texts += 1
        for item in items:
            if item.kind == _SCALAR:
                values = [Summary.Value(tag=tag, simple_value=v) for tag, v in item.payload]
                events.add_summary(Summary(value=values), item.step, item.walltime)
                scalars += len(values)
            elif item.kind == _IMAGE:
                pixels = _read_png(item.payload)
                if pixels is not None:
                    writer.add_image("samples", pixels, item.step, item.walltime,
                                     dataformats="HWC")
                    images += 1
            else:
                writer.add_text(*item.payload, item.step, item.walltime)
                texts += 1
        events.add_summary(session_end, items[-1].step if items else 0, clock.last)
    except OSError as exc:
        raise GantuiError(f"cannot write to {safe(target)}: {exc.strerror or exc}") from None
    finally:
        writer.close()
    return ExportResult(target, scalars, images, texts, skipped + quality_skipped)


# ---- reading the run -----------------------------------------------------------------------


def _read_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The config and the metrics records (those with a step), or a one-line error."""
    where = safe(run_dir)
    if not run_dir.is_dir():
        raise GantuiError(f"no run directory at {where}")
    if not (run_dir / "config.toml").is_file():
        raise GantuiError(f"{where} is not a gantui run (no config.toml)")
    if not (run_dir / "metrics.jsonl").is_file():
        raise GantuiError(f"{where} has no metrics.jsonl: nothing to export yet")
    metrics = [r for r in read_jsonl(run_dir / "metrics.jsonl") if _step(r) is not None]
    if not metrics:
        raise GantuiError(f"{where} has no metrics to export yet (metrics.jsonl is empty)")
    return read_toml_dict(run_dir / "config.toml"), metrics


def _step(record: dict[str, Any]) -> int | None:
    step = as_int(record.get("step"))
    return step if step is not None and step >= 0 else None


def _walltime(record: dict[str, Any]) -> float | None:
    value = as_float(record.get("time"))
    return value if value is not None and math.isfinite(value) and value > 0 else None


def _finite(value: Any) -> float | None:
    """``value`` as a float TensorBoard can hold: None for a non-number, NaN for a number it
    cannot hold (not finite, or beyond float32), which is counted as skipped."""
    number = as_float(value)
    if number is None:
        return None
    return number if math.isfinite(number) and abs(number) <= _FLOAT32_MAX else math.nan


def _metric_items(records: list[dict[str, Any]], clock: _Clock) -> tuple[list[_Item], int]:
    """One scalar item per metrics record; how many non-finite values were left out."""
    items, skipped = [], 0
    for record in records:
        step = _step(record)
        values = []
        for name, raw in record.items():
            if name in NOT_SCALARS or not _NAME_RE.match(name):
                continue
            value = _finite(raw)
            if value is None:
                continue
            if math.isnan(value):
                skipped += 1
                continue
            values.append((METRIC_TAGS.get(name, f"train/{name}"), value))
        if values:
            items.append(_Item(step, _SCALAR, _walltime(record) or clock.at(step), values))
    return items, skipped


def _quality_items(run_dir: Path, clock: _Clock) -> tuple[list[_Item], int]:
    """``quality/<name>`` scalars per evaluation in ``quality.jsonl``."""
    items, skipped = [], 0
    for record in read_jsonl(run_dir / "quality.jsonl"):
        step, values = _step(record), record.get("values")
        if step is None or not isinstance(values, dict):
            continue
        scalars = []
        for name, raw in values.items():
            value = _finite(raw) if _NAME_RE.match(name) else None
            if value is None:
                continue
            if math.isnan(value):
                skipped += 1
                continue
            scalars.append((f"quality/{name}", value))
        if scalars:
            items.append(_Item(step, _SCALAR, clock.at(step), scalars))
    return items, skipped


def _sample_items(run_dir: Path, clock: _Clock) -> list[_Item]:
    """One image item per ``samples/step-XXXXXXXX.png`` (read when written)."""
    return [_Item(step, _IMAGE, clock.at(step), path) for step, path in sample_files(run_dir)]


def _read_png(path: Path) -> Any:
    """A sample grid as an (H, W, 3) uint8 array; None when unreadable or not an image."""
    import numpy as np
    from PIL import Image

    try:
        with open_regular(path) as fh, Image.open(fh) as image:
            return np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError):
        return None  # PIL's ways of saying "not an image I can read"


def _journal_items(run_dir: Path, clock: _Clock) -> list[_Item]:
    """One ``journal`` text per step with live changes (``set`` records in events.jsonl)."""
    by_step: dict[int, list[str]] = {}
    for record in read_jsonl(run_dir / "events.jsonl"):
        step = _step(record)
        if record.get("event") != "set" or step is None or "key" not in record:
            continue
        try:
            line = (f"- {_code(record['key'])}: {_code(_show(record.get('old')))} → "
                    f"{_code(_show(record.get('new')))}")
        except RecursionError:  # a hostile, absurdly nested value
            continue
        by_step.setdefault(step, []).append(line)
    return [_Item(step, _TEXT, clock.at(step),
                  ("journal", f"**step {step}**, set live:\n\n" + "\n".join(lines)))
            for step, lines in sorted(by_step.items())]


# ---- formatting --------------------------------------------------------------------------


def config_markdown(config: dict[str, Any]) -> str:
    """The config as a two-column Markdown table (TensorBoard's text dashboard renders it)."""
    rows = ["| key | value |", "|---|---|"]
    rows += [f"| {_code(key)} | {_code(_show(value))} |" for key, value in config.items()]
    return "\n".join(rows)


def _show(value: Any) -> str:
    """A config or journal value as TOML would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(map(_show, value))
    if value is None:
        return ""
    return str(value)


def _code(text: Any) -> str:
    """``text`` as a Markdown code span that stays on one line and in its table cell."""
    return "`" + safe(text, 200).replace("`", "'").replace("|", "\\|") + "`"


def _hparams(config: dict[str, Any]) -> dict[str, bool | int | float | str]:
    """The config as HParams values: numbers, flags and strings; lists spelled as text."""
    out: dict[str, bool | int | float | str] = {}
    for key, value in config.items():
        if key == "description" or not isinstance(key, str):
            continue
        if isinstance(value, bool | str):
            out[key] = value
        elif isinstance(value, int | float):
            number = as_float(value)
            if number is not None:
                out[key] = number
        elif isinstance(value, list):
            out[key] = _show(value)
    return out


def _hparam_metric(tag: str) -> bool:
    return tag in HPARAM_METRICS or tag.startswith("quality/")


def _prepare(target: Path) -> Path:
    """Create ``target`` and remove the event files of an earlier export from it."""
    try:
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob(EVENT_FILES):
            if old.is_file() or old.is_symlink():
                old.unlink()
    except FileExistsError:
        raise GantuiError(f"{safe(target)} exists but is not a directory") from None
    except OSError as exc:
        raise GantuiError(f"cannot write to {safe(target)}: {exc.strerror or exc}") from None
    return target
