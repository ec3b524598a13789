"""Runs side by side: one metric's curves on a shared chart and a summary table.

Reads only ``metrics.jsonl``, ``config.toml`` and ``run.json``: no torch, so it is quick over
SSH, and it works on live runs too.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from rich.table import Table
from rich.text import Text

from gantui.chart import Line, plot_text
from gantui.errors import GantuiError
from gantui.files import as_int, read_json_dict, read_jsonl, read_toml_dict
from gantui.history import Series

METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g", "grad_g", "grad_d", "img_per_s")
COLORS = (39, 208, 70, 170, 226, 196, 45, 250)
"""256-colour codes, one per run in order."""


@dataclass(frozen=True)
class RunCurves:
    """One run's metric history, read from its directory."""

    name: str
    preset: str
    records: list[dict]

    def series(self, metric: str) -> Series:
        """``metric`` against step."""
        out = Series(max(16, len(self.records)))
        rows = [r for r in self.records if isinstance(r.get(metric), (int, float))]
        out.extend([r["step"] for r in rows], [float(r[metric]) for r in rows])
        return out

    def last(self, metric: str) -> float | None:
        """The latest value of ``metric``, if any."""
        for record in reversed(self.records):
            if isinstance(record.get(metric), (int, float)):
                return float(record[metric])
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
        runs.append(RunCurves(path.name, str(preset), records))
    return runs


def chart(runs: list[RunCurves], metric: str, width: int, height: int,
          smoothing: float = 0.0) -> Text:
    """One chart of ``metric`` with a line per run (colours as in :data:`COLORS`)."""
    if metric not in METRICS:
        raise GantuiError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
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
    for column in ("run", "preset", "step", "loss_d", "loss_g", "D(x)", "D(G(z))", "img/s"):
        table.add_column(column, justify="left" if column in ("run", "preset") else "right")

    def fmt(value: float | None, spec: str = ".4f") -> str:
        return "-" if value is None else format(value, spec)

    for i, run in enumerate(runs):
        rates = [r["img_per_s"] for r in run.records if isinstance(r.get("img_per_s"),
                                                                   (int, float))]
        step = run.records[-1].get("step") if run.records else None
        table.add_row(
            Text(run.name, style=f"color({COLORS[i % len(COLORS)]})"), run.preset,
            "-" if step is None else str(step), fmt(run.last("loss_d")),
            fmt(run.last("loss_g")), fmt(run.last("d_real"), ".3f"),
            fmt(run.last("d_fake"), ".3f"),
            fmt(statistics.fmean(rates) if rates else None, ",.0f"))
    return table
