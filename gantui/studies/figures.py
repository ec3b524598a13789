"""Matplotlib figures of runs, as PNG bytes: curves over steps with the live changes marked,
several runs on shared axes (``gantui compare --png``) and panels of sample grids.

Matplotlib is imported inside the functions (with the Agg backend, and through
:class:`matplotlib.figure.Figure` rather than pyplot's global state), so importing this module
costs nothing; torch is never needed. Every string drawn comes from files anyone could have
written, so it goes through :func:`gantui.text.safe` and has its ``$`` escaped (matplotlib
would parse it as mathtext).
"""

from __future__ import annotations

import io
import math
import os
import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gantui.errors import GantuiError
from gantui.events import change_kind
from gantui.files import as_float, as_int, atomic_write_bytes, open_regular
from gantui.history import Series
from gantui.quality.describe import DESCRIPTIONS, format_value
from gantui.run.follow import sample_files
from gantui.studies.compare import METRICS, QUALITY_METRICS, RunCurves, load_runs
from gantui.text import safe, shown, value_text

CURVES = {
    "losses": ("losses", ("loss_d", "loss_g"), False),
    "d_outputs": ("D(x) and D(G(z))", ("d_real", "d_fake", "d_fake_g"), False),
    "grad_norms": ("gradient norms", ("grad_g", "grad_d"), True),
}
"""Curve figures of one run: ``kind: (title, metrics.jsonl fields, log scale)``."""
MAX_IMAGE_BYTES = 64 * 2**20
"""Larger sample files are skipped rather than decoded."""
CHANGE_COLOR = "tab:red"


@dataclass(frozen=True)
class Change:
    """A live change from the journal (an ``events.jsonl`` record with ``"event": "set"``)."""

    step: int
    key: str
    old: Any
    new: Any

    @property
    def label(self) -> str:
        """``key old→new``, printable and short."""
        return safe(f"{self.key} {value_text(self.old)}→{value_text(self.new)}", 80)


@dataclass(frozen=True)
class Drawn:
    """A rendered figure."""

    png: bytes
    """The PNG file's bytes."""
    markers: tuple[str, ...] = ()
    """Labels of the change lines drawn on it, in journal order (curve figures)."""
    panels: tuple[str, ...] = ()
    """Titles of the images shown side by side (panel figures)."""

    def save(self, path: Path) -> Path:
        """Write the PNG to ``path`` (see :func:`save_bytes`)."""
        return save_bytes(path, self.png)


def save_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`gantui.files.atomic_write_bytes`).

    Raises:
        GantuiError: it cannot be written, as one line.
    """
    try:
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise GantuiError(f"cannot write {safe(path)}: {exc.strerror or exc}") from None
    return path


def live_changes(records: Iterable[dict]) -> list[Change]:
    """The live changes in journal records (``events.jsonl``), skipping malformed ones: the
    ``set`` kind of :func:`gantui.events.change_kind` (pauses, checkpoints and warnings are in
    the report's journal table)."""
    out = []
    for record in records:
        if change_kind(record) != "set":
            continue
        step, key = as_int(record.get("step")), record.get("key")
        if step is not None and isinstance(key, str):
            out.append(Change(step, key, record.get("old"), record.get("new")))
    return out


def curves_figure(run: RunCurves, kind: str, changes: list[Change] | tuple[Change, ...] = (),
                  smoothing: float = 0.0) -> Drawn:
    """One of :data:`CURVES` for one run, every change drawn as a labelled vertical line.

    Args:
        run: the run's metrics (:func:`gantui.studies.compare.load_runs`).
        kind: ``losses``, ``d_outputs`` or ``grad_norms``.
        changes: live changes to mark (:func:`live_changes`).
        smoothing: EMA factor in ``[0, 1)``; above 0 the raw curve is drawn faint beneath.
    """
    title, metrics, log = CURVES[kind]
    lines = [(name, run.series(name)) for name in metrics]
    return _curves(f"{title} · {run.name}", lines, changes, log=log, smoothing=smoothing)


def run_figures(run: RunCurves, changes: list[Change] | tuple[Change, ...] = (),
                smoothing: float = 0.0) -> dict[str, Drawn]:
    """Every curve figure of a run: the :data:`CURVES` kinds, plus ``quality`` when the run has
    evaluations (:func:`quality_figure`)."""
    out = {kind: curves_figure(run, kind, changes, smoothing) for kind in CURVES}
    quality = quality_figure(run, changes)
    if quality is not None:
        out["quality"] = quality
    return out


def quality_figure(run: RunCurves, changes: list[Change] | tuple[Change, ...] = ()
                   ) -> Drawn | None:
    """The primary quality value over steps with its best marked (a star), and the changes as
    vertical lines; None when the run has no evaluations."""
    primary = primary_metric([run])
    if primary is None:
        return None
    best = None
    last = run.quality[-1]
    best_step, best_value = as_int(last.get("best_step")), as_float(last.get("best_value"))
    if best_step is not None and best_value is not None and math.isfinite(best_value):
        best = (best_step, best_value, f"best {format_value(primary, best_value)} @{best_step}")
    about = DESCRIPTIONS.get(primary)
    title = f"quality: {primary}" + (f" ({about})" if about else "") + f" · {run.name}"
    return _curves(title, [(primary, run.series(primary))], changes, best=best)


def primary_metric(runs: list[RunCurves]) -> str | None:
    """The quality value the runs' evaluations rank by (the most common, when they differ)."""
    counts: dict[str, int] = {}
    for run in runs:
        if run.quality and isinstance(run.quality[-1].get("primary"), str):
            name = run.quality[-1]["primary"]
            counts[name] = counts.get(name, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def compare_figure(runs: list[RunCurves], metric: str, smoothing: float = 0.9,
                   title: str | None = None) -> Drawn:
    """One metric of several runs on shared axes, EMA-smoothed as ``gantui compare`` does
    (the raw values faint beneath); gradient norms on a log scale.

    Raises:
        GantuiError: ``metric`` is not one gantui records.
    """
    _check_metric(metric)
    if not 0.0 <= smoothing < 1.0:
        raise GantuiError(f"smoothing must be in [0, 1) (got {smoothing:g})")
    lines = [(run.name, run.series(metric)) for run in runs]
    return _curves(title or f"{metric} (EMA {smoothing:g})", lines, (),
                   log=metric in ("grad_g", "grad_d"), smoothing=smoothing, ylabel=metric)


def compare_png(run_dirs: list[Path], metric: str, path: Path, smoothing: float = 0.9) -> Path:
    """``gantui compare RUN... --png FILE``: :func:`compare_figure` of the runs, written to
    ``path``.

    Raises:
        GantuiError: a path that is not a run, an unknown metric, no run with a value of it
            yet, or ``path`` cannot be written.
    """
    _check_metric(metric)
    runs = load_runs(run_dirs)
    if not any(len(_finite(run.series(metric))[0]) for run in runs):
        raise GantuiError(f"no run has {metric} values yet: nothing to draw")
    return compare_figure(runs, metric, smoothing).save(path)


def evenly(items: list, k: int) -> list:
    """At most ``k`` items spread evenly over ``items``, the first and last included."""
    if len(items) <= k:
        return list(items)
    picks = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in dict.fromkeys(picks.tolist())]


def read_image(path: Path) -> np.ndarray | None:
    """A PNG (or any image PIL reads) as an array, or None when it is missing, not a regular
    file, too large or undecodable."""
    from PIL import Image

    try:
        with open_regular(path) as fh:
            if os.fstat(fh.fileno()).st_size > MAX_IMAGE_BYTES:
                return None
            data = fh.read()
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            return np.asarray(image)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None


def sample_strip(run_dir: Path, frames: int = 8) -> Drawn | None:
    """Up to ``frames`` of the run's preview grids, evenly spaced over its steps, in a row;
    None when there are none readable."""
    panels = []
    for step, path in evenly(sample_files(run_dir), frames):
        image = read_image(path)
        if image is not None:
            panels.append((f"step {step}", image))
    if not panels:
        return None
    return panels_figure(panels, cols=len(panels))


def panels_figure(panels: list[tuple[str, np.ndarray]], title: str | None = None,
                  cols: int | None = None) -> Drawn:
    """Images side by side, each under its (wrapped) title: a sample strip, or one final grid
    per run of a sweep. Grey images are drawn grey.

    Args:
        panels: ``(title, image)``; image ``(H, W)`` or ``(H, W, 3)``, uint8 or in [0, 1].
        title: above them all.
        cols: images per row (default: up to 6).
    """
    from matplotlib.figure import Figure

    _agg()
    n = max(1, len(panels))
    cols = max(1, min(cols or 6, n))
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(2.4 * cols, 2.6 * rows + (0.4 if title else 0)), dpi=100,
                 layout="constrained")
    if title:
        fig.suptitle(_plain(title, 120))
    labels = []
    for i, (label, image) in enumerate(panels):
        ax = fig.add_subplot(rows, cols, i + 1)
        grey = image.ndim == 2
        ax.imshow(image, cmap="gray" if grey else None, vmin=0,
                  vmax=255 if image.dtype == np.uint8 else 1, interpolation="nearest")
        ax.set_axis_off()
        text = safe(label, 160)
        labels.append(text)
        ax.set_title(_plain("\n".join(textwrap.wrap(text, 30)[:4])), fontsize=8)
    return Drawn(_png(fig), panels=tuple(labels))


# ---- drawing ----------------------------------------------------------------------------


def _curves(title: str, lines: list[tuple[str, Series]], changes: Iterable[Change], *,
            log: bool = False, smoothing: float = 0.0, best: tuple[int, float, str] | None = None,
            ylabel: str | None = None) -> Drawn:
    from matplotlib.figure import Figure
    from matplotlib.transforms import blended_transform_factory

    _agg()
    fig = Figure(figsize=(8.5, 3.6), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    drawn = 0
    for i, (name, series) in enumerate(lines):
        color = f"C{i % 10}"
        steps, values = _finite(series, positive=log)
        if not len(steps):
            continue
        drawn += 1
        style = {"marker": "o", "markersize": 3} if len(steps) < 30 else {}
        if smoothing > 0 and len(steps) > 1:
            smooth_steps, smooth = _finite_pair(series.steps, series.smoothed(smoothing), log)
            ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
            ax.plot(smooth_steps, smooth, color=color, linewidth=1.6, label=_plain(name, 60))
        else:
            ax.plot(steps, values, color=color, linewidth=1.4, label=_plain(name, 60), **style)
    if best is not None:
        step, value, label = best
        if value > 0 or not log:
            ax.plot([step], [value], marker="*", markersize=14, color="gold",
                    markeredgecolor="black", linestyle="none", zorder=5, label=_plain(label))
    if drawn and log:
        ax.set_yscale("log")
    if not drawn:
        ax.text(0.5, 0.5, "no data yet", transform=ax.transAxes, ha="center", va="center",
                color="grey")
    markers = _mark_changes(ax, list(changes), blended_transform_factory(ax.transData,
                                                                         ax.transAxes))
    ax.set_title(_plain(title, 120), fontsize=10)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(_plain(ylabel, 40))
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=8, loc="best")
    return Drawn(_png(fig), markers=markers)


def _mark_changes(ax, changes: list[Change], transform) -> tuple[str, ...]:
    """A dashed vertical line with a triangle on top per step that had changes, labelled with
    each ``key old→new`` of that step; the labels drawn, in journal order."""
    by_step: dict[int, list[str]] = {}
    for change in changes:
        by_step.setdefault(change.step, []).append(change.label)
    for step, labels in by_step.items():
        ax.axvline(step, color=CHANGE_COLOR, linestyle="--", linewidth=1, alpha=0.8)
        ax.plot([step], [1.0], marker="v", color=CHANGE_COLOR, transform=transform,
                clip_on=False, markersize=7)
        ax.text(step, 0.97, _plain("\n".join(labels[:6] + (["…"] if len(labels) > 6 else []))),
                transform=transform, rotation=90, ha="right", va="top", fontsize=7,
                color=CHANGE_COLOR, bbox={"facecolor": "white", "alpha": 0.7,
                                          "edgecolor": "none", "pad": 1})
    return tuple(change.label for change in changes)


def _finite(series: Series, positive: bool = False) -> tuple[np.ndarray, np.ndarray]:
    return _finite_pair(series.steps, series.values, positive)


def _finite_pair(steps: np.ndarray, values: np.ndarray, positive: bool
                 ) -> tuple[np.ndarray, np.ndarray]:
    keep = np.isfinite(values) & np.isfinite(steps)
    if positive:
        keep &= values > 0
    return steps[keep], values[keep]


def _agg() -> None:
    import matplotlib

    matplotlib.use("Agg")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _plain(text: Any, limit: int | None = None) -> str:
    """Text for matplotlib: printable lines (newlines kept), and no mathtext."""
    lines = str(text).split("\n")
    return "\n".join(safe(line, limit) for line in lines).replace("$", r"\$")


def _check_metric(metric: str) -> None:
    if metric not in METRICS and metric not in QUALITY_METRICS:
        raise GantuiError(f"unknown metric {shown(metric)}; choose from "
                          f"{', '.join(METRICS + QUALITY_METRICS)}")
