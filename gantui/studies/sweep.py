"""``gantui sweep``: a grid of ordinary runs, resumable, with a table and a figure at the end.

A sweep is a directory ``RUNS_DIR/<name>/`` holding ``sweep.json`` (what was asked: preset,
varied keys and values, seeds, fixed ``--set`` overrides, and the list of runs), one ordinary
run directory per grid point (``ngf=64-seed=0/``...), ``logs/`` with each run's headless
output, and at the end ``summary.md``, ``summary.csv`` and ``summary.png``.

Each run is a ``gantui train --no-ui`` child process, so a sweep is as robust as a single run:
rerunning the same command after a kill skips finished runs, resumes interrupted ones from
their checkpoints and starts the rest. ``--parallel K`` runs K children at a time and gives
each ``threads = cores // K``, so they never oversubscribe the machine.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gantui import config as config_mod
from gantui import procs
from gantui.config import ConfigError, plain
from gantui.errors import GantuiError
from gantui.files import atomic_write_bytes, read_json_dict, read_jsonl
from gantui.studies.summary import SWEEP_VERSION, Summary, read_walls, summarise
from gantui.text import number, safe, shown, value_text

TUPLE_SEPARATOR = ";"
"""Separates the values of a list-valued key in ``--vary`` (``g_hidden=128,128;256,256``)."""


class SweepError(GantuiError):
    """A sweep that cannot be run as asked."""


# ---- the grid --------------------------------------------------------------------------------

def parse_vary(items: list[str]) -> dict[str, list[Any]]:
    """``["ngf=32,64", "loss=hinge,lsgan"]`` -> ``{"ngf": [32, 64], "loss": [...]}``, typed
    and checked like ``--set`` values.

    Raises:
        SweepError: an unknown key, an empty list, a repeated key or value, a bad value.
    """
    out: dict[str, list[Any]] = {}
    names = config_mod.field_names()
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SweepError(f"--vary expects KEY=V1,V2,...; got {shown(item)}")
        if key not in names:
            raise SweepError(f"--vary: unknown key {shown(key)}; keys: {', '.join(names)}")
        if key in ("seed", "description"):
            raise SweepError(f"--vary {key}: use --seeds N for seeds" if key == "seed"
                             else "--vary description: not a hyperparameter")
        if key in out:
            raise SweepError(f"--vary {key} given twice; list all its values once")
        listed = isinstance(config_mod.Config().__getattribute__(key), tuple)
        parts = raw.split(TUPLE_SEPARATOR if listed else ",")
        if not raw or any(not p for p in parts):
            hint = f" (values of {key} are lists: separate them with ';')" if listed else ""
            raise SweepError(f"--vary {key}= needs values, e.g. {key}=V1,V2{hint}")
        values = [config_mod.coerce(key, part) for part in parts]
        if len({json.dumps(plain(v)) for v in values}) != len(values):
            raise SweepError(f"--vary {key}: a value is listed twice")
        out[key] = values
    return out


def run_name(params: dict[str, Any]) -> str:
    """``ngf=64-loss=hinge-seed=0``: a directory name for a grid point."""
    parts = [f"{key}={value_text(value)}" for key, value in params.items()]
    return re.sub(r"[^A-Za-z0-9=._+-]", "_", "-".join(parts))


def grid(vary: dict[str, list[Any]], seeds: list[int], zipped: bool = False
         ) -> list[dict[str, Any]]:
    """Every combination of the varied values (or, ``zipped``, the i-th of each together),
    times every seed, in a stable order."""
    keys = list(vary)
    if zipped:
        lengths = {len(v) for v in vary.values()}
        if len(lengths) > 1:
            raise SweepError("zipped values must come in lists of one length; got "
                             + ", ".join(f"{k}: {len(v)}" for k, v in vary.items()))
        combos = list(zip(*vary.values(), strict=True))
    else:
        combos = list(itertools.product(*vary.values()))
    return [{**dict(zip(keys, combo, strict=True)), "seed": seed}
            for combo in combos for seed in seeds]


# ---- studies -----------------------------------------------------------------------------

def studies_dir() -> Path:
    """Where the shipped study files live (``presets/studies``)."""
    return config_mod.presets_dir() / "studies"


def study_names() -> list[str]:
    return sorted(p.stem for p in studies_dir().glob("*.toml"))


@dataclass(frozen=True)
class Study:
    """A study file: a preset, the keys it varies, seeds and fixed overrides."""

    name: str
    description: str
    preset: str
    vary: list[str]
    """``KEY=V1,V2`` strings, as ``--vary`` takes them."""
    seeds: int
    sets: list[str]
    zipped: bool


def load_study(name: str) -> Study:
    """A shipped study by name, or a study TOML file by path.

    Raises:
        SweepError: unknown study, or a file that is not a valid study.
    """
    path = Path(name).expanduser()
    if not (name.endswith(".toml") or path.is_file()):
        path = studies_dir() / f"{name}.toml"
        if not path.is_file():
            raise SweepError(f"unknown study {shown(name)}; available: "
                             f"{', '.join(study_names())} (or a path to a study .toml)")
    data = config_mod.read_toml(path)
    vary = data.get("vary")
    if not isinstance(vary, dict) or not vary:
        raise SweepError(f"{path}: a study needs a [vary] table of KEY = [values]")
    items = []
    for key, values in vary.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{path}: vary.{key} must be a non-empty list")
        listed = isinstance(getattr(config_mod.Config(), key, None), tuple)
        sep = TUPLE_SEPARATOR if listed else ","
        items.append(f"{key}=" + sep.join(
            ",".join(str(x) for x in v) if isinstance(v, list) else
            (str(v).lower() if isinstance(v, bool) else str(v)) for v in values))
    fixed = data.get("set", {})
    if not isinstance(fixed, dict):
        raise SweepError(f"{path}: [set] must be a table of KEY = value")
    sets = [f"{k}={_set_text(v)}" for k, v in fixed.items()]
    seeds = data.get("seeds", 1)
    if type(seeds) is not int or not 1 <= seeds <= 100:
        raise SweepError(f"{path}: seeds must be an integer from 1 to 100")
    return Study(path.stem, str(data.get("description", "")), str(data.get("preset", "")),
                 items, seeds, sets, bool(data.get("zip", False)))


def _set_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


# ---- the plan ----------------------------------------------------------------------------

@dataclass
class Plan:
    """One sweep: where it lives, what it runs."""

    name: str
    path: Path
    preset: str
    vary: dict[str, list[Any]]
    seeds: list[int]
    sets: list[str]
    zipped: bool
    runs: list[dict[str, Any]] = field(default_factory=list)
    """``{"name": ..., "params": {...}}`` per grid point."""

    def spec(self) -> dict[str, Any]:
        return {"version": SWEEP_VERSION, "name": self.name, "preset": self.preset,
                "vary": {k: [plain(v) for v in vs] for k, vs in self.vary.items()},
                "seeds": self.seeds, "sets": self.sets, "zip": self.zipped,
                "runs": [{"name": r["name"], "params": {k: plain(v) for k, v in
                                                         r["params"].items()}}
                         for r in self.runs]}

    def run_sets(self, params: dict[str, Any]) -> list[str]:
        """The ``--set`` list of one grid point: the fixed ones, then its own values."""
        own = [f"{k}={_set_text(plain(v))}" for k, v in params.items()]
        return [*self.sets, *own]


def plan(preset: str, vary: list[str], seeds: int = 1, sets: list[str] | None = None,
         name: str | None = None, runs_dir: Path = Path("runs"), zipped: bool = False) -> Plan:
    """Check everything a sweep needs before any run starts; every grid point's config is
    built, so a bad combination fails here.

    Raises:
        SweepError: bad ``--vary``/``--seeds``, or a config a grid point cannot build.
    """
    if not vary:
        raise SweepError("nothing to sweep: give --vary KEY=V1,V2 (or --study NAME)")
    if not 1 <= seeds <= 100:
        raise SweepError(f"--seeds must be between 1 and 100 (got {seeds})")
    sets = list(sets or [])
    preset_name, base = config_mod.load(preset, sets)
    varied = parse_vary(vary)
    clash = sorted(set(varied) & {config_mod.parse_assignment(s)[0] for s in sets})
    if clash:
        raise SweepError(f"{', '.join(clash)} is both varied and fixed with --set; pick one")
    points = grid(varied, [base.seed + i for i in range(seeds)], zipped)
    default = f"{preset_name}-" + "-".join(varied)
    sweep_name = name or default
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._=+-]{0,120}", sweep_name):
        raise SweepError(f"--name {shown(sweep_name)}: use letters, digits and ._=+-")
    result = Plan(sweep_name, runs_dir / sweep_name, preset_name, varied,
                  [base.seed + i for i in range(seeds)], sets, zipped)
    for params in points:
        try:
            config_mod.load(preset, result.run_sets(params))
        except ConfigError as exc:
            raise SweepError(f"grid point {run_name(params)}: {exc}") from None
        result.runs.append({"name": run_name(params), "params": params})
    return result


# ---- running it --------------------------------------------------------------------------

@dataclass
class RunStatus:
    """What the progress view shows of one grid point."""

    name: str
    params: dict[str, Any]
    state: str = "pending"
    """pending, running, finished, stopped, error, failed (the child exited non-zero)."""
    step: int = 0
    total: int = 0
    loss_d: float | None = None
    loss_g: float | None = None
    quality: str = ""
    img_per_s: float | None = None
    wall_s: float = 0.0
    note: str = ""


def _threads_for(parallel: int) -> int:
    from gantui.system import available_cores

    return max(1, available_cores() // parallel)


def _latest_metrics(run_dir: Path) -> dict[str, Any] | None:
    from gantui.run.runs import _reverse_records

    return next(iter(_reverse_records(run_dir / "metrics.jsonl")), None)


def _refresh(status: RunStatus, run_dir: Path) -> None:
    record = _latest_metrics(run_dir)
    if record is not None:
        step = record.get("step")
        status.step = step if type(step) is int else status.step
        for key in ("loss_d", "loss_g", "img_per_s"):
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                setattr(status, key, float(value))
    quality = read_jsonl(run_dir / "quality.jsonl")[-1:] if (
        run_dir / "quality.jsonl").exists() else []
    if quality:
        from gantui.quality.describe import format_value

        q = quality[0]
        primary = q.get("primary")
        value = (q.get("values") or {}).get(primary) if isinstance(q.get("values"), dict) else None
        if isinstance(primary, str) and isinstance(value, (int, float)):
            status.quality = f"{safe(primary, 20)} {format_value(primary, float(value))}"


def plan_command(preset: str | None, vary: list[str], study: str | None, seeds: int | None,
                 sets: list[str], name: str | None, runs_dir: Path, zipped: bool) -> Plan:
    """``gantui sweep``'s options as a :class:`Plan`: a study's ``vary``, ``set``, ``seeds``,
    ``preset`` and ``zip`` first, the command line's on top of them.

    Raises:
        SweepError: an unknown study or any reason :func:`plan` refuses.
    """
    if study is not None:
        found = load_study(study)
        vary, sets = [*found.vary, *vary], [*found.sets, *sets]
        seeds = found.seeds if seeds is None else seeds
        preset = preset or found.preset or None
        zipped = zipped or found.zipped
        name = name or f"{found.name}-{(preset or config_mod.DEFAULT_PRESET)}"
    return plan(preset or config_mod.DEFAULT_PRESET, vary, 1 if seeds is None else seeds, sets,
                name, runs_dir, zipped)


class Sweep:
    """Runs a :class:`Plan` to the end, resuming whatever an earlier attempt left."""

    def __init__(self, plan_: Plan, parallel: int = 1, device: str = "auto",
                 say: Callable[[str], None] = print, poll_s: float = 0.5,
                 notify: str | None = None) -> None:
        self.plan = plan_
        self.notify = notify
        """``--notify`` for every run (not part of the sweep's identity)."""
        self.parallel = parallel
        self.device = device
        self.say = say
        self.poll_s = poll_s
        self.threads = _threads_for(parallel)
        self.status = {r["name"]: RunStatus(r["name"], r["params"]) for r in plan_.runs}
        self.walls = {}
        self._children: dict[str, tuple[procs.Child, float, Any]] = {}
        self._stopping = False

    @property
    def stopped(self) -> bool:
        """True once a signal stopped the sweep (its unfinished runs resume on a rerun)."""
        return self._stopping

    # -- setup --

    def claim(self) -> None:
        """Create the sweep directory, or check an existing one holds this same sweep.

        Raises:
            SweepError: it holds a different sweep, or one of its runs is live elsewhere.
        """
        path = self.plan.path
        spec = self.plan.spec()
        existing = read_json_dict(path / "sweep.json") if path.exists() else None
        if path.exists() and existing is None and any(path.iterdir()):
            raise SweepError(f"{path} exists and is not a sweep; use another --name")
        if existing is not None:
            mismatch = [k for k in ("preset", "vary", "seeds", "sets", "zip")
                        if existing.get(k) != spec[k]]
            if mismatch:
                raise SweepError(f"{path} holds a different sweep ({', '.join(mismatch)} "
                                 f"differ); rerun it as it was, or use another --name")
        from gantui.run.lock import is_locked

        live = [r["name"] for r in self.plan.runs if is_locked(path / r["name"])]
        if live:
            raise SweepError(f"{path}: run {live[0]} is training in another process; is this "
                             f"sweep already running?")
        (path / "logs").mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path / "sweep.json", json.dumps(spec, indent=1).encode())
        self.walls = read_walls(path)

    def _todo(self) -> list[tuple[str, list[str]]]:
        """``(run name, train arguments)`` for every run not yet done, in grid order."""
        from gantui.run.lock import is_locked
        from gantui.run.runs import run_state
        from gantui.run.store import RunStore, StoreError

        out = []
        for run in self.plan.runs:
            name, run_dir = run["name"], self.plan.path / run["name"]
            status = self.status[name]
            if not (run_dir / "config.toml").is_file():
                if run_dir.exists():  # a start that died before writing anything useful
                    self._set_aside(run_dir)
                out.append((name, self._fresh_args(run)))
                continue
            state = run_state(run_dir, is_locked)
            _refresh(status, run_dir)
            if state in ("finished", "error"):  # diverged runs are a result too
                status.state = state
                status.wall_s = self.walls.get(name, 0.0)
                continue
            try:
                has_checkpoint = bool(RunStore.open(run_dir).checkpoint_paths())
            except StoreError:
                has_checkpoint = False
            if has_checkpoint:
                status.note = f"resumed ({state})"
                out.append((name, ["--resume", str(run_dir),
                                   *self._set_args([f"threads={self.threads}"], own=False)]))
            else:  # killed before its first checkpoint: nothing to resume from
                self._set_aside(run_dir)
                status.note = "restarted (no checkpoint)"
                out.append((name, self._fresh_args(run)))
        return out

    def _fresh_args(self, run: dict[str, Any]) -> list[str]:
        """``gantui train`` arguments that start grid point ``run`` from scratch."""
        return ["--preset", self.plan.preset, "--runs-dir", str(self.plan.path), "--name",
                run["name"], *self._set_args(self.plan.run_sets(run["params"]))]

    def _set_args(self, sets: list[str], own: bool = True) -> list[str]:
        extra = [f"threads={self.threads}"] if own else []
        return [item for s in [*sets, *extra] for item in ("--set", s)]

    def _set_aside(self, run_dir: Path) -> None:
        """Keep a run directory that cannot be resumed, out of the sweep's way."""
        aside = self.plan.path / ".set-aside"
        aside.mkdir(exist_ok=True)
        target = aside / f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        shutil.move(str(run_dir), str(target))
        self.say(f"{run_dir.name}: set aside to {target} (no checkpoint to resume from)")

    # -- the loop --

    def run(self, view: Callable[[list[RunStatus]], None] | None = None) -> list[RunStatus]:
        """Start children ``parallel`` at a time until every run is done, or a signal says
        stop (SIGTERM, SIGINT): the children get SIGTERM, checkpoint and exit (killed after
        :data:`gantui.procs.GRACE_S`); rerun to continue. SIGHUP (a dropped connection) only
        takes the terminal away: the sweep goes on, its table and lines unseen. A sweep killed
        outright has its children stop themselves the same way
        (:func:`gantui.procs.follow_parent`)."""
        todo = self._todo()
        done_before = len(self.plan.runs) - len(todo)
        if done_before:
            self.say(f"{done_before} of {len(self.plan.runs)} runs already done")

        def on_signal(signum: int, _frame: Any) -> None:
            if signum == signal.SIGHUP:  # the terminal is gone: the sweep carries on without
                procs.detach_from_terminal()
                return
            self._stopping = True

        with procs.on_stop_signals(on_signal):
            try:
                while (todo or self._children) and not self._stopping:
                    while todo and len(self._children) < self.parallel and not self._stopping:
                        name, args = todo.pop(0)
                        self._start(name, args)
                    self._reap()
                    for name in self._children:
                        _refresh(self.status[name], self.plan.path / name)
                    if view is not None:
                        view(list(self.status.values()))
                    time.sleep(self.poll_s)
            finally:  # stopped, or an error here: no child outlives the loop
                self._stop_children()
        if view is not None:
            view(list(self.status.values()))
        return list(self.status.values())

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.plan.path / "logs" / f"{name}.log", "ab")  # noqa: SIM115
        command = [sys.executable, "-m", "gantui", "train", "--no-ui", "--device", self.device,
                   *args, *(["--notify", self.notify] if self.notify is not None else [])]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        proc = procs.Child(command, stdout=log, stderr=subprocess.STDOUT,
                           stdin=subprocess.DEVNULL, env=env)
        self._children[name] = (proc, time.monotonic(), log)
        status = self.status[name]
        status.state = "running"
        self.say(f"{name}: started" + (f", {status.note}" if status.note else ""))

    def _reap(self) -> None:
        from gantui.run.lock import is_locked
        from gantui.run.runs import run_state

        for name, (proc, started, log) in list(self._children.items()):
            code = proc.poll()
            if code is None:
                continue
            log.close()
            del self._children[name]
            status = self.status[name]
            self.walls[name] = self.walls.get(name, 0.0) + time.monotonic() - started
            atomic_write_bytes(self.plan.path / "walls.json", json.dumps(self.walls).encode())
            status.wall_s = self.walls[name]
            run_dir = self.plan.path / name
            _refresh(status, run_dir)
            state = run_state(run_dir, is_locked) if (run_dir / "config.toml").exists() else ""
            status.state = state if code == 0 or state in ("error", "stopped") else "failed"
            if status.state == "failed":
                status.note = _last_line(self.plan.path / "logs" / f"{name}.log")
            self.say(f"{name}: {status.state} after {status.wall_s:.0f} s"
                     + (f" ({status.note})" if status.state == "failed" else ""))

    def _stop_children(self) -> None:
        """SIGTERM to every child (each writes a checkpoint and exits), SIGKILL to any still
        there after :data:`gantui.procs.GRACE_S`."""
        procs.end_all([proc for proc, _, _ in self._children.values()])
        self._reap()


def _last_line(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return safe(lines[-1], 200) if lines else ""


# ---- the table ---------------------------------------------------------------------------

def write_summary(plan_: Plan, table: Summary) -> tuple[Path, Path]:
    """``summary.md`` and ``summary.csv`` in the sweep directory: ``table`` (see
    :func:`gantui.studies.summary.summarise`) under a line saying what was swept."""
    if not table.rows:
        raise SweepError("no runs to summarise")
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([table.columns, *table.rows])
    csv_path = plan_.path / "summary.csv"
    atomic_write_bytes(csv_path, buffer.getvalue().encode())
    lines = [f"# Sweep {plan_.name}", "",
             f"preset `{plan_.preset}`, varied: "
             + ", ".join(f"`{k}` = {', '.join(value_text(v) for v in vs)}"
                         for k, vs in plan_.vary.items())
             + f"; seeds {', '.join(map(str, plan_.seeds))}"
             + (f"; fixed: {' '.join('`' + s + '`' for s in plan_.sets)}" if plan_.sets else ""),
             "", "| " + " | ".join(table.columns) + " |", "|" + " --- |" * len(table.columns)]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |"
              for row in table.rows]
    md_path = plan_.path / "summary.md"
    atomic_write_bytes(md_path, ("\n".join(lines) + "\n").encode())
    return md_path, csv_path


# ---- the progress view -------------------------------------------------------------------

def progress_table(statuses: list[RunStatus]):
    """A rich table, one line per run, for the live view in a terminal."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("run", "state", "step", "loss_d", "loss_g", "quality", "img/s", "wall"):
        table.add_column(column, justify="right" if column not in ("run", "state", "quality")
                         else "left", no_wrap=True)
    styles = {"running": "green", "finished": "blue", "error": "red", "failed": "bold red",
              "stopped": "yellow", "pending": "dim"}
    for s in statuses:
        table.add_row(s.name, f"[{styles.get(s.state, '')}]{s.state}[/]",
                      f"{s.step:,}" if s.step else "", number(s.loss_d), number(s.loss_g),
                      s.quality, f"{s.img_per_s:,.0f}" if s.img_per_s else "",
                      f"{s.wall_s:.0f}s" if s.wall_s else "")
    return table


def write_figure(plan_: Plan, table: Summary) -> Path | None:
    """``summary.png``: the quality metric (else loss_g) of every run on shared axes; None
    when no run has metrics."""
    from gantui.studies.figures import compare_figure

    curves = [r.curves for r in table.runs if r.curves is not None]
    if not curves:
        return None
    primaries = {c.quality[-1]["primary"] for c in curves if c.quality}
    metric = primaries.pop() if len(primaries) == 1 else "loss_g"
    return compare_figure(curves, metric, 0.6 if metric == "loss_g" else 0.0).save(
        plan_.path / "summary.png")


def write_results(plan_: Plan, statuses: list[RunStatus]) -> tuple[Path, Path, Path | None]:
    """The sweep's ``summary.md``, ``summary.csv`` and ``summary.png`` (None without metrics),
    from one reading of its run directories."""
    table = summarise(plan_.path, plan_.runs, plan_.vary, {s.name: s.state for s in statuses})
    md, csv_path = write_summary(plan_, table)
    return md, csv_path, write_figure(plan_, table)
