"""A sweep directory read once, and its table: what ``gantui sweep`` writes to ``summary.md``
and ``summary.csv`` and what ``gantui report SWEEP_DIR`` shows.

Everything here may be torn or hostile (a damaged ``sweep.json``, a run directory with a FIFO
for a journal, a run name that climbs out of the sweep): :func:`read_sweep` refuses a sweep it
cannot use with one line, and :func:`summarise` turns every run it cannot read into a
``missing`` row instead of an error.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gantui.errors import GantuiError
from gantui.files import as_float, as_int, open_regular, read_json_dict, toml_readable
from gantui.quality.describe import format_value
from gantui.run.lock import is_locked
from gantui.run.runs import run_state
from gantui.studies.compare import RunCurves, load_runs
from gantui.text import number, safe, value_text

SWEEP_VERSION = 1
"""The ``sweep.json`` layout this gantui writes and reads."""
RESULT_COLUMNS = ("state", "step", "metric", "final", "best", "best_step", "loss_d", "loss_g",
                  "img_per_s", "wall_s")
"""The table's columns after ``run`` and the parameter columns."""
MAX_KEYS = 32
"""Most parameter columns (a hostile ``sweep.json`` could list thousands)."""
RUN_FILES = ("config.toml", "metrics.jsonl", "events.jsonl", "quality.jsonl", "run.json")
"""A run directory's files that must be regular files when present."""


@dataclass(frozen=True)
class SweepSpec:
    """What ``sweep.json`` asked for, every field checked and defaulted."""

    name: str
    """The sweep's name (its directory name when unrecorded)."""
    path: Path
    """The sweep directory."""
    preset: str
    """The preset every run starts from (``?`` when unrecorded)."""
    vary: dict[str, list[Any]]
    """Each varied key and its values."""
    seeds: list[Any]
    """The seeds of every grid point."""
    sets: list[Any]
    """The fixed ``--set`` overrides."""
    runs: list[Any]
    """The listed runs as found: ``{"name": ..., "params": {...}}`` when intact."""


@dataclass(frozen=True)
class RunResult:
    """One listed run of a sweep as found on disk."""

    name: str
    """Its name, printable (as listed when damaged)."""
    params: dict[str, Any]
    """Its grid point: the varied values and the seed ({} when unlisted)."""
    run_dir: Path | None
    """Its run directory; None when the name is unusable or the directory unreadable."""
    curves: RunCurves | None
    """Its metrics and evaluations; None when it has no metrics."""
    state: str
    """The run's state, a live state from the caller, or ``missing`` with the reason."""


@dataclass(frozen=True)
class Summary:
    """A sweep's runs as read and the one table made of them."""

    runs: list[RunResult]
    """One per listed run, in the listed order."""
    columns: list[str]
    """``run``, the parameter columns, then :data:`RESULT_COLUMNS`."""
    rows: list[list[str]]
    """One row of printable cells per run."""


def read_sweep(sweep_dir: Path) -> SweepSpec:
    """A sweep directory's ``sweep.json``, every field checked (its runs kept as found).

    Raises:
        GantuiError: no directory, no ``sweep.json``, one that is not a regular file or not a
            JSON object, another version, or one listing no runs; one line each.
    """
    if not sweep_dir.is_dir():
        raise GantuiError(f"no run or sweep directory at {safe(sweep_dir)}")
    path = sweep_dir / "sweep.json"
    if not path.is_file():
        raise GantuiError(f"{safe(sweep_dir)} is not a gantui run or sweep directory (no "
                          f"config.toml or sweep.json)")
    try:
        open_regular(path).close()
    except OSError as exc:
        raise GantuiError(f"cannot read {safe(path)}: {exc.strerror or exc}") from None
    spec = read_json_dict(path)
    if not spec:
        raise GantuiError(f"cannot read {safe(path)}: not a JSON object")
    version = spec.get("version", SWEEP_VERSION)
    if version != SWEEP_VERSION:
        raise GantuiError(f"{safe(path)} has version {safe(value_text(version), 20)}; this "
                          f"gantui reads version {SWEEP_VERSION}")
    runs = spec.get("runs")
    if not isinstance(runs, list) or not runs:
        raise GantuiError(f"{safe(path)} lists no runs: nothing to report")
    vary = spec.get("vary") if isinstance(spec.get("vary"), dict) else {}
    return SweepSpec(
        name=safe(value_text(spec.get("name", sweep_dir.name)), 300), path=sweep_dir,
        preset=safe(value_text(spec.get("preset", "?")), 300),
        vary={str(k): v if isinstance(v, list) else [v] for k, v in vary.items()},
        seeds=spec["seeds"] if isinstance(spec.get("seeds"), list) else [],
        sets=spec["sets"] if isinstance(spec.get("sets"), list) else [], runs=runs)


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that cannot be read safely.

    Raises:
        GantuiError: no directory, no ``config.toml``, one of its files not a regular file
            (a FIFO would block a reader) or unreadable, or ``config.toml`` not valid TOML.
    """
    if not run_dir.is_dir():
        raise GantuiError(f"no run or sweep directory at {safe(run_dir)}")
    if not (run_dir / "config.toml").is_file():
        raise GantuiError(f"{safe(run_dir)} is not a gantui run or sweep directory (no "
                          f"config.toml or sweep.json)")
    for name in RUN_FILES:
        path = run_dir / name
        if path.exists() or path.is_symlink():
            try:
                open_regular(path).close()
            except OSError as exc:
                raise GantuiError(f"cannot read {safe(path)}: {exc.strerror or exc}") from None
    if not toml_readable(run_dir / "config.toml"):
        raise GantuiError(f"cannot read {safe(run_dir / 'config.toml')}: not valid TOML")


def read_run(sweep_dir: Path, item: Any, state: str | None = None) -> RunResult:
    """One run listed in a sweep, read from ``sweep_dir``; never raises.

    Args:
        sweep_dir: the sweep directory.
        item: the run as listed (``{"name": ..., "params": {...}}``; anything else is damage).
        state: what the caller knows of a run without metrics (``pending``, ``failed``...),
            shown instead of ``missing``.
    """
    name = item.get("name") if isinstance(item, dict) else None
    params = item.get("params") if isinstance(item, dict) else None
    params = params if isinstance(params, dict) else {}
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or \
            name in (".", "..") or "\0" in name:
        return RunResult(safe(value_text(name), 300), params, None, None,
                         state or "missing (bad name in sweep.json)")
    run_dir = sweep_dir / name
    try:
        check_run_dir(run_dir)
        (curves,) = load_runs([run_dir])
    except GantuiError:
        return RunResult(name, params, None, None, state or "missing")
    if not curves.records:
        return RunResult(name, params, run_dir, None, state or "missing (no metrics)")
    return RunResult(name, params, run_dir, curves, run_state(run_dir, is_locked))


def read_walls(sweep_dir: Path) -> dict[str, float]:
    """Seconds each run has trained under the sweep, from ``walls.json`` ({} when absent)."""
    walls = {k: as_float(v) for k, v in read_json_dict(sweep_dir / "walls.json").items()}
    return {k: v for k, v in walls.items() if v is not None and math.isfinite(v)}


def summarise(sweep_dir: Path, runs: list[Any], vary: dict[str, Any],
              states: dict[str, str] | None = None) -> Summary:
    """Read every listed run and build the sweep's table: the run, its varied values and
    seed, state, step, the primary metric with its final and best values, the final losses,
    the median img/s and the wall time; runs that cannot be read say ``missing``.

    Args:
        sweep_dir: the sweep directory.
        runs: the listed runs (:attr:`SweepSpec.runs`, or a plan's).
        vary: the varied keys, the table's first parameter columns (``seed`` follows).
        states: live states by run name, for runs without metrics yet.
    """
    states = states or {}
    results = [read_run(sweep_dir, item, states.get(item.get("name"))
                        if isinstance(item, dict) and isinstance(item.get("name"), str)
                        else None) for item in runs]
    keys = [*vary, "seed"] if vary else [k for r in results for k in r.params]
    keys = list(dict.fromkeys(str(k) for k in keys))[:MAX_KEYS]
    walls = read_walls(sweep_dir)
    rows = [[safe(r.name, 80), *(safe(value_text(r.params[k]), 80) if k in r.params else ""
                                 for k in keys), *_result_cells(r, walls)] for r in results]
    return Summary(results, ["run", *keys, *RESULT_COLUMNS], rows)


def _result_cells(result: RunResult, walls: dict[str, float]) -> list[str]:
    """The :data:`RESULT_COLUMNS` of one run."""
    run = result.curves
    if run is None:
        return [safe(result.state, 80)] + [""] * (len(RESULT_COLUMNS) - 1)
    step = as_int(run.records[-1].get("step"))
    rates = [v for v in (as_float(r.get("img_per_s")) for r in run.records[1:] or run.records)
             if v is not None and math.isfinite(v)]
    wall = walls.get(result.name)
    return [safe(result.state, 80), "" if step is None else str(step), *_quality_cells(run),
            number(run.last("loss_d")), number(run.last("loss_g")),
            f"{statistics.median(rates):.0f}" if rates else "",
            "" if wall is None else f"{wall:.0f}"]


def _quality_cells(run: RunCurves) -> list[str]:
    """The last evaluation's primary metric, its final value (ring runs add the high-quality
    fraction), and the best value with its step."""
    if not run.quality or not isinstance(run.quality[-1].get("primary"), str):
        return ["", "", "", ""]
    last = run.quality[-1]
    metric = last["primary"]
    value, best = as_float(last.get(metric)), as_float(last.get("best_value"))
    final = format_value(metric, value) if value is not None else ""
    hq = as_float(last.get("hq"))
    if final and metric == "modes" and hq is not None:
        final += f" (hq {format_value('hq', hq)})"
    best_step = as_int(last.get("best_step"))
    if best is None or not math.isfinite(best) or best_step is None:
        return [safe(metric, 20), final, "", ""]
    return [safe(metric, 20), final, format_value(metric, best), str(best_step)]
