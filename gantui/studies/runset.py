"""The runs a compare view follows: run directories and sweep directories resolved to one list,
each run named by what sets it apart from the others and given a stable colour.

A sweep's runs are named by the keys the sweep varied (``sweep.json``, read by
:func:`~gantui.studies.summary.read_sweep`), and ``seed`` when it took more than one; runs
named one by one are named by the config keys whose values differ between them. No Textual and
no torch here: the compare view draws from this, and it is quick to test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gantui.errors import GantuiError
from gantui.files import read_toml_dict
from gantui.studies.summary import check_run_dir, read_sweep
from gantui.text import safe, value_text

MAX_RUNS = 32
"""Most runs one compare view follows (each polls its files and draws a line per chart)."""
COLORS = (39, 208, 70, 170, 226, 196, 45, 250, 129, 214, 118, 203, 33, 220, 99, 160)
"""256-colour codes, one per run in order: 16 that stay apart on a dark background (the
first eight are ``gantui compare``'s)."""
IGNORED_KEYS = frozenset({"description", "name", "out_dir", "runs_dir", "threads"})
"""Config keys that differ between runs without saying anything about how they train."""
LABEL_CHARS = 28
"""Longest label a run gets in legends and tables."""


@dataclass(frozen=True)
class RunRef:
    """One run of the set."""

    path: Path
    """Its run directory."""
    name: str
    """Its full printable name (``sweep/run`` for a sweep's run)."""
    params: dict[str, Any] = field(default_factory=dict)
    """Its values of the set's varied keys."""
    color: int = COLORS[0]
    """Its line colour (256-colour code), fixed for the life of the view."""
    label: str = ""
    """Its short name: the varied values (``lr_g=0.0001 seed=1``), else its directory name."""


@dataclass(frozen=True)
class RunSet:
    """The runs a compare view follows, in the order given."""

    runs: list[RunRef]
    """The runs."""
    keys: list[str]
    """The varied keys, the table's parameter columns."""
    title: str
    """What the set is (a sweep's name, or how many runs)."""


def resolve(paths: list[Path]) -> RunSet:
    """Turn run and sweep directories into one :class:`RunSet`; repeats are dropped.

    Raises:
        GantuiError: a path that is neither a run nor a sweep directory (or cannot be read),
            no runs at all, or more than :data:`MAX_RUNS`; one line each.
    """
    found: list[tuple[Path, str, dict[str, Any] | None]] = []
    sweep_keys: list[str] = []
    sweeps: list[str] = []
    for path in paths:
        if (path / "config.toml").is_file() or not (path / "sweep.json").exists():
            check_run_dir(path)
            found.append((path, safe(path.name, 80), None))
            continue
        spec = read_sweep(path)
        sweeps.append(spec.name)
        keys = list(spec.vary) + (["seed"] if len(spec.seeds) > 1 else [])
        sweep_keys += [k for k in keys if k not in sweep_keys]
        for item in spec.runs:
            name = item.get("name") if isinstance(item, dict) else None
            if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                continue  # damaged entry: gantui report lists it as missing
            params = item.get("params") if isinstance(item.get("params"), dict) else {}
            # a run the sweep has not started yet is followed too: it appears when it starts
            found.append((path / name, safe(f"{path.name}/{name}", 80),
                          {k: params[k] for k in keys if k in params}))
    unique: dict[Path, tuple[Path, str, dict[str, Any] | None]] = {}
    for entry in found:
        unique.setdefault(entry[0].resolve(), entry)
    entries = list(unique.values())
    if not entries:
        raise GantuiError("no runs to compare yet (a sweep's runs appear once they start)")
    if len(entries) > MAX_RUNS:
        raise GantuiError(f"{len(entries)} runs: the compare view follows at most {MAX_RUNS}; "
                          f"name fewer runs")
    configs = [read_toml_dict(p / "config.toml") for p, _, _ in entries]
    keys = [k for k in varied_keys(configs) if k not in sweep_keys] if \
        any(params is None for _, _, params in entries) or len(sweeps) > 1 else []
    keys = sweep_keys + keys
    runs = []
    for i, ((path, name, params), config) in enumerate(zip(entries, configs, strict=True)):
        values = {k: (params[k] if params is not None and k in params else config.get(k))
                  for k in keys}
        runs.append(RunRef(path, name, values, COLORS[i % len(COLORS)],
                           label_for(values, path.name)))
    title = sweeps[0] if len(sweeps) == 1 and len(paths) == 1 else f"{len(runs)} runs"
    return RunSet(runs, keys, safe(title, 80))


def varied_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The config keys whose values are not the same in every config, in first-seen order
    (a key missing from some config counts as varied), :data:`IGNORED_KEYS` left out."""
    keys = list(dict.fromkeys(k for config in configs for k in config))
    out = []
    for key in keys:
        if key in IGNORED_KEYS:
            continue
        values = {value_text(config.get(key)) for config in configs}
        if len(values) > 1:
            out.append(key)
    return out


def label_for(values: dict[str, Any], fallback: str) -> str:
    """``lr_g=0.0001 seed=1``: a run's varied values, cut to :data:`LABEL_CHARS`; its
    directory name when nothing varies."""
    if not values:
        return safe(fallback, LABEL_CHARS)
    return safe(" ".join(f"{k}={value_text(v)}" for k, v in values.items()), LABEL_CHARS)
