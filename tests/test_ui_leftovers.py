"""Dashboard leftovers: one duration format, the data source said once, no stale live value
after replaying a resumed run, and watch steering a run that (re)starts while watched."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path

from gantui import events as ev
from gantui.headless import LinePrinter, follow
from gantui.remote import RemoteController
from gantui.run.follow import RunFollower
from gantui.run.lock import is_locked
from gantui.run.store import RunStore
from gantui.session import start
from gantui.text import duration
from gantui.ui import GantuiApp
from gantui.ui.model import RunModel
from gantui.ui.panels import status_text

from .conftest import tiny, until


def test_one_duration_format_for_the_headless_line_and_the_status_bar() -> None:
    assert [duration(s) for s in (0, 42.4, 185, 3725, 360_000)] == [
        "0s", "42s", "3m05s", "1h02m", "100h00m"]
    assert [duration(s) for s in (math.nan, -1, math.inf, 1e12)] == ["--"] * 4
    metrics = ev.Metrics(5, 0, 1, 1, 0.5, 0.5, 0.5, 1, 1, 1e-3, 1e-3, 900.0, 185.0, 0.0)
    line = LinePrinter().line(metrics)
    model = RunModel(state="running")
    model.apply(metrics)
    assert "eta 3m05s" in line and "ETA 3m05s" in str(status_text(model, ""))
    assert "aug" not in line and "aug" not in str(status_text(model, ""))
    adapted = dataclasses.replace(metrics, aug_p=0.23)  # ada_target's chance
    model.apply(adapted)
    assert "aug 23%" in LinePrinter().line(adapted) and "aug 23%" in str(status_text(model, ""))


def _resumed_after_a_lost_change(runs_dir: Path) -> Path:
    """A run that changed d_steps after its checkpoint at step 20, "crashed" (the later
    checkpoints deleted, as if it died before writing them) and was resumed from step 20."""
    cfg = tiny("ring-8", "steps=100000", "checkpoint_every=20", "log_every=5", "eval_every=0")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    run = session.run_dir
    try:
        until_step = 25
        while session.trainer.step < until_step:
            session.join(0.05)
        session.controller.pause().result(timeout=30)
        session.controller.set({"d_steps": 2, "label_smoothing": 0.1}).result(timeout=30)
    finally:
        session.controller.stop()
        session.join(60)
    for path in RunStore.open(run).checkpoint_paths():
        if int(path.stem.split("-")[1]) > 20:
            path.unlink()
    resumed = start(None, "", resume=run, sets=["steps=30"], device="cpu")
    follow(resumed, 60)
    assert resumed.state == "finished", resumed.error
    return run


def test_a_replayed_resumed_run_shows_the_values_it_runs_with(runs_dir: Path) -> None:
    run = _resumed_after_a_lost_change(runs_dir)
    model = RunModel()
    lines = [line for e in RunFollower(run).drain() for line in model.apply(e)]
    assert model.config["d_steps"] == 1 and model.config["label_smoothing"] == 0.0
    assert "d_steps" not in model.changed_at
    undone = [line.text for line in lines if "was undone" in line.text]
    assert len(undone) == 2 and "resumed from its checkpoint at step 20" in undone[0]
    data = [line.text for line in lines if line.text.startswith("ring8:")]
    assert len(data) == 1  # the data source, said once across the two starts


def test_watch_can_steer_once_a_watched_run_restarts(runs_dir: Path) -> None:
    session = start(tiny("ring-8", "eval_every=0"), "ring-8", runs_dir=runs_dir,
                    device="cpu")
    follow(session, 60)
    run = session.run_dir
    controller = RemoteController(run)
    app = GantuiApp(RunFollower(run).drain, controller, attached=True,
                    can_steer=lambda: is_locked(run))
    resumed = None

    async def main():
        nonlocal resumed
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: app.model.state == "finished")
            assert not app.check_action("pause", ())  # finished: nothing to steer
            resumed = start(None, "", resume=run, sets=["steps=1000000"], device="cpu")
            await until(pilot, lambda: app.model.live and app.steerable)
            assert app.check_action("pause", ())
            await pilot.press("p")
            await until(pilot, lambda: resumed.state == "paused")
            resumed.controller.stop()
            resumed.join(60)
            await until(pilot, lambda: not app.steerable)
            assert not app.check_action("pause", ())

    try:
        asyncio.run(main())
    finally:
        controller.close()
        if resumed is not None and resumed.alive:
            resumed.controller.stop()
            resumed.join(60)
