"""Runs side by side: one metric's curves on a shared chart and a summary table.

Reads only ``metrics.jsonl``, ``config.toml`` and ``run.json``: no torch, so it is quick over
SSH, and it works on live runs too.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table
from rich.text import Text

from gantui.chart import Line, plot_text
from gantui.errors import GantuiError
from gantui.files import as_float, as_int, read_json_dict, read_jsonl, read_toml_dict
from gantui.history import Series
from gantui.quality.describe import DESCRIPTIONS, describe_value, format_value
from gantui.text import safe, shown

METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g", "grad_g", "grad_d", "img_per_s",
           "info_acc", "aug_p")
"""Training metrics, from metrics.jsonl."""
QUALITY_METRICS = tuple(DESCRIPTIONS)
"""Quality values, from quality.jsonl (each run has those its data allows)."""
COLORS = (39, 208, 70, 170, 226, 196, 45, 250)
"""256-colour codes, one per run in order."""


@dataclass(frozen=True)
class RunCurves:
    """One run's metric history, read from its directory."""

    name: str
    preset: str
    records: list[dict]
    quality: list[dict] = field(default_factory=list)
    """quality.jsonl records flattened: ``{"step": ..., "primary": ..., **values}``."""

    def series(self, metric: str) -> Series:
        """``metric`` against step."""
        records = self.records if metric in METRICS else self.quality
        out = Series(max(16, len(records)))
        rows = [(as_int(r.get("step")), as_float(r.get(metric))) for r in records]
        rows = [(s, v) for s, v in rows if s is not None and v is not None]
        out.extend([s for s, _ in rows], [v for _, v in rows])
        return out

    def last(self, metric: str) -> float | None:
        """The latest value of ``metric``, if any."""
        for record in reversed(self.records if metric in METRICS else self.quality):
            value = as_float(record.get(metric))
            if value is not None:
                return value
        return None


def load_runs(run_dirs: list[Path]) -> list[RunCurves]:
    """Read each run's metrics.

    Raises:
        GantuiError: a path that is not a gantui run.
    """
    runs = []
    for path in run_dirs:
        if not (path / "config.toml").is_file():
            raise GantuiError(f"{path} is not a gantui run (no config.toml)")
        preset = (read_json_dict(path / "run.json").get("preset")
                  or read_toml_dict(path / "config.toml").get("preset", "?"))
        records = [r for r in read_jsonl(path / "metrics.jsonl")
                   if as_int(r.get("step")) is not None]  # skip foreign or torn records
        runs.append(RunCurves(safe(path.name, 60), safe(preset, 30), records,
                              _quality_records(path / "quality.jsonl")))
    return runs


def _quality_records(path: Path) -> list[dict]:
    out = []
    for record in read_jsonl(path):
        values, step = record.get("values"), as_int(record.get("step"))
        if isinstance(values, dict) and step is not None and isinstance(
                record.get("primary"), str):
            out.append({**values, "step": step, "primary": record.get("primary"),
                        "best_value": record.get("best_value"),
                        "best_step": record.get("best_step")})
    return out


def chart(runs: list[RunCurves], metric: str, width: int, height: int,
          smoothing: float = 0.0) -> Text:
    """One chart of ``metric`` with a line per run (colours as in :data:`COLORS`)."""
    if metric not in METRICS and metric not in QUALITY_METRICS:
        raise GantuiError(f"unknown metric {shown(metric)}; choose from "
                          f"{', '.join(METRICS + QUALITY_METRICS)}")
    lines = [Line(run.name, run.series(metric), COLORS[i % len(COLORS)])
             for i, run in enumerate(runs)]
    return plot_text(lines, width, height, smoothing=smoothing)


def legend(runs: list[RunCurves]) -> Text:
    """Each run's name in its line colour."""
    text = Text()
    for i, run in enumerate(runs):
        text.append(f"━ {run.name}  ", style=f"color({COLORS[i % len(COLORS)]})")
    return text


def summary(runs: list[RunCurves]) -> Table:
    """Final values and throughput of each run, in its chart colour."""
    table = Table(box=None, pad_edge=False)
    for column in ("run", "preset", "step", "loss_d", "loss_g", "D(x)", "D(G(z))", "img/s",
                   "quality", "best"):
        table.add_column(column, justify="left" if column in ("run", "preset") else "right")

    def fmt(value: float | None, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    for i, run in enumerate(runs):
        rates = [v for v in (as_float(r.get("img_per_s")) for r in run.records)
                 if v is not None and math.isfinite(v)]
        step = run.records[-1].get("step") if run.records else None
        table.add_row(
            Text(run.name, style=f"color({COLORS[i % len(COLORS)]})"), Text(run.preset),
            "-" if step is None else str(step), fmt(run.last("loss_d")),
            fmt(run.last("loss_g")), fmt(run.last("d_real"), ".3f"),
            fmt(run.last("d_fake"), ".3f"),
            fmt(statistics.fmean(rates) if rates else None, ",.0f"), *_quality_cells(run))
    return table


def _quality_cells(run: RunCurves) -> tuple[Text, Text]:
    """The last evaluation's primary value and the best one with its step."""
    if not run.quality:
        return Text("-"), Text("-")
    last = run.quality[-1]
    primary = last.get("primary")
    if not isinstance(primary, str):
        return Text("-"), Text("-")
    value, best = as_float(last.get(primary)), as_float(last.get("best_value"))
    if value is None:
        return Text("-"), Text("-")
    now = Text(safe(describe_value(primary, value), 40))
    if best is None:
        return now, Text("-")
    return now, Text(f"{format_value(primary, best)} @{as_int(last.get('best_step'))}")
