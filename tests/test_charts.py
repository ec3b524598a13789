"""The dashboard's charts (#24): changes marked on the live curves and listed from the chart,
charts that grow with the terminal, an expandable event log, a log-scale y and a wall-time x,
and a preview that shows as much of the grid as fits at a legible size."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from gantui import events as ev
from gantui import session as session_mod
from gantui.config import Config
from gantui.studies.figures import live_changes
from gantui.ui import GantuiApp
from gantui.ui.modals import ChangesModal
from gantui.ui.plots import MARK_COLORS
from gantui.ui.preview import MIN_SAMPLE_PX, subgrid_shown

from .conftest import until


def test_one_rule_says_which_journal_records_are_changes() -> None:
    records = [
        {"event": "start", "step": 0, "resumed": False},
        {"event": "state", "step": 0, "state": "running", "message": ""},
        {"event": "set", "step": 5, "key": "lr_g", "old": 2e-4, "new": 1e-4},
        {"event": "state", "step": 7, "state": "paused", "message": "paused by ctl"},
        {"event": "state", "step": 7, "state": "running", "message": "resumed by ctl"},
        {"event": "checkpoint", "step": 9, "path": "c.pt", "reason": "requested"},
        {"event": "alert", "step": 9, "kind": "d_wins", "message": "D wins"},
        {"event": "start", "step": 9, "resumed": True},
        {"event": "note", "step": 9, "message": "data"},
        {"event": "set", "step": 10, "key": 3},  # malformed: no marker, no figure line
    ]
    kinds = [ev.change_kind(r) for r in records]
    assert kinds == [None, None, "set", "pause", "resume", "checkpoint", "warning", "restart",
                     None, None]
    assert [c.label for c in live_changes(records)] == ["lr_g 0.0002→0.0001"]  # the set kind


@pytest.fixture
def live(tiny_cfg, runs_dir):
    """A toy run long enough to steer; stopped and joined whatever the test does."""
    cfg = tiny_cfg.replace(steps=1_000_000, log_every=2, sample_every=1_000_000,
                           checkpoint_every=1_000_000, eval_every=1_000_000, lr_decay="none")
    session = session_mod.start(cfg, "ring-8", runs_dir=runs_dir, name="marks", device="cpu")
    yield session
    if session.alive:
        session.controller.stop()
        session.join(30)
    assert not session.alive


def test_a_set_and_a_pause_are_marked_on_the_charts_and_listed(live) -> None:
    app = GantuiApp(live.queue.drain, live.controller, plot_hz=20)
    trainer = live.trainer

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: trainer.step > 20 and len(app.model.series["loss_d"]) > 3)
            live.controller.set({"lr_g": 1e-4}, source="ctl").result(10)  # as `gantui ctl set`
            live.controller.pause(source="ctl").result(10)
            await until(pilot, lambda: app.model.state == "paused")
            live.controller.resume(source="ctl").result(10)
            resumed = len(app.model.series["loss_d"])
            await until(pilot, lambda: len(app.model.series["loss_d"]) > resumed + 2)
            live.controller.pause(source="ctl").result(10)  # the trainer idles while we look
            await until(pilot, lambda: app.model.state == "paused")
            marks = [m for m in app.model.marks if m.kind in ("set", "pause", "resume")]
            assert [m.kind for m in marks] == ["set", "pause", "resume", "pause"]
            assert "lr_g" in marks[0].text and "ctl" in marks[1].text
            loss = app.plots[0]
            await until(pilot, lambda: loss._version == app.model.metrics_version
                        and "┊" in loss.render().plain)
            text = loss.render()
            colors = {span.style.color.number for span in text.spans
                      if "┊" in text.plain[span.start:span.end] and span.style.color}
            assert colors and colors <= set(MARK_COLORS.values()), (colors, app.model.marks)

            await pilot.press("m")  # every change, newest first
            await until(pilot, lambda: isinstance(app.screen, ChangesModal))
            listed = app.screen.text.plain.splitlines()
            assert len(listed) == len(app.model.marks)
            assert "paused by ctl" in listed[0] and any("lr_g" in r for r in listed)
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, ChangesModal))

            # a click on a marker lists the changes near it
            rows = loss.render().plain.splitlines()
            row = next(i for i, r in enumerate(rows) if "┊" in r)
            column = rows[row].index("┊")
            await pilot.click(loss, offset=(column, row + 1))  # + the top border
            await until(pilot, lambda: isinstance(app.screen, ChangesModal))
            assert "near" in app.screen.title_text and "┊" in app.screen.text.plain

    asyncio.run(main())


def _grid(nrow: int = 8, side: int = 28) -> ev.Preview:
    size = nrow * side + 2 * (nrow + 1)
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 1), np.uint8)
    return ev.Preview(1, pixels.tobytes(), size, size, 1, nrow, 0.3)


def _events(quality: bool) -> list:
    out = [ev.RunStarted("/tmp/x", "toy", "dcgan-mnist-plain", "cpu", 0, 1000, Config().to_dict(),
                         "toy data"),
           ev.StateChanged(0, "running"), _grid()]
    out += [ev.Metrics(s, 0, 1 + math.sin(s / 10), 1 + math.cos(s / 10), .6, .4, .4, 1., 2.,
                       2e-4, 2e-4, 100., 60., 1000. + 3 * s) for s in range(1, 200)]
    out += [ev.Changed(50, "lr_g", 2e-4, 1e-4), ev.Checkpointed(120, "c.pt", "every 100")]
    if quality:
        out.append(ev.Quality(100, {"fid": 50.0}, "fid", 100, 50.0, 1.0))
    return out


def _drain(events: list):
    def drain() -> list:
        out = list(events)
        events.clear()
        return out
    return drain


@pytest.mark.parametrize(("size", "least"), [((80, 24), 2), ((160, 48), 8)])
def test_charts_grow_with_the_terminal(size, least) -> None:
    app = GantuiApp(_drain(_events(quality=True)), None)

    async def main():
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.quality_plot.display and app.plots[0].draws)
            await pilot.pause()
            charts = [*app.plots, app.quality_plot]
            rows = [p.content_size.height - 3 for p in charts]  # frame, ticks, labels
            assert min(rows) >= least, rows
            for plot in charts:  # each chart's rendering fills its rows
                assert len(plot.render().plain.splitlines()) == plot.content_size.height

            log = app.event_log.content_size.height
            await pilot.press("v")
            await pilot.pause()
            assert app.event_log.content_size.height > log + 4
            await pilot.press("v")
            await pilot.pause()
            assert app.event_log.content_size.height == log

    asyncio.run(main())


def test_log_scale_and_wall_time_axis() -> None:
    events = _events(quality=False)
    events.append(ev.Metrics(200, 0, -0.5, 0.2, .6, .4, .4, 1e-3, 1e3, 2e-4, 2e-4, 100., 60.,
                             1600.))  # a negative loss (hinge): left out on a log scale
    app = GantuiApp(_drain(events), None)

    async def main():
        async with app.run_test(size=(130, 42)) as pilot:
            loss = app.plots[0]
            await until(pilot, lambda: loss.draws and len(app.model.series["loss_d"]) == 200)
            await pilot.pause()
            linear = loss.render().plain
            assert "-0.5" in linear and loss.border_subtitle == "x: step"
            await pilot.press("y")
            await pilot.pause()
            logged = loss.render().plain
            assert logged != linear and "-0.5" not in logged
            assert "log y" in loss.border_subtitle and "log" in app.view_label()
            assert app.grads.log_scale and app.plots[1].border_subtitle == "x: step"
            await pilot.press("t")
            await pilot.pause()
            assert loss.border_subtitle.startswith("x: minutes")  # 600 s of metrics
            ticks = loss.render().plain.splitlines()[-1].split()
            assert float(ticks[-1]) == pytest.approx(10.0, abs=0.1)  # 1600 s - 1000 s
            await pilot.press("y", "t")
            await pilot.pause()
            assert loss.render().plain == linear and not app.grads.log_scale

    asyncio.run(main())


def test_the_preview_shows_as_much_of_the_grid_as_fits_legibly() -> None:
    grid = _grid()
    across, down = subgrid_shown(grid.height, grid.width, grid.nrow, 50, 19)
    assert (across, down) == (6, 4)  # a wide panel: more columns than rows, none below 8 px
    assert 50 // across >= MIN_SAMPLE_PX and 2 * 19 // down >= MIN_SAMPLE_PX
    assert subgrid_shown(grid.height, grid.width, grid.nrow, 200, 120) == (8, 8)
    app = GantuiApp(_drain([_grid()]), None)

    async def main():
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: app.preview.image is not None)
            await pilot.pause()
            size = app.preview.content_size
            k, rows = subgrid_shown(grid.height, grid.width, grid.nrow, size.width, size.height)
            assert k * rows > 4 * 4  # the square crop showed 4x4 here
            assert f"top-left {k}×{rows}" in app.preview.border_title

    asyncio.run(main())


def test_a_long_runs_regular_checkpoints_do_not_hide_the_curves() -> None:
    from gantui.ui.model import Mark
    from gantui.ui.plots import drawn_marks

    marks = [Mark(s, "checkpoint", "c") for s in range(0, 100_001, 1000)]
    marks.append(Mark(50_500, "set", "lr_g"))
    marks.append(Mark(50_510, "warning", "D wins"))  # the same column: the warning shows
    drawn = drawn_marks(marks, (0, 100_000), 60)
    assert drawn == [(50_510.0, MARK_COLORS["warning"])]
    few = drawn_marks(marks[::20], (0, 100_000), 60)
    assert len(few) == 6  # a handful of checkpoints is drawn
