"""Keys typed in one burst, as a paste, a fast typist or ``tmux send-keys`` deliver them: the
compare view's and the picker's Enter and space (priority keys, handled before the table has
moved its cursor) act on the row the keys before them chose; and the table's columns grow
with their values (``980/4000``, not ``980/400``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from textual import events
from textual.app import App
from textual.widgets.data_table import ColumnKey

from gantui.studies.runset import resolve
from gantui.ui.compare import CompareApp, CompareState, Focus
from gantui.ui.picker import RunPicker

from .conftest import until
from .test_compare_view import cells, make_sweep


def _burst(app: App, *keys: str) -> None:
    """Queue ``keys`` at once (Pilot.press would wait for the app after each)."""
    for key in keys:
        app.post_message(events.Key(key, {"enter": "\r", "space": " "}.get(key)))


def test_a_burst_of_keys_focuses_and_marks_the_row_it_chose(finished_ring: Path,
                                                             tmp_path: Path) -> None:
    sweep = make_sweep(finished_ring, tmp_path, 3)
    state = CompareState(resolve([sweep]))

    async def compare() -> None:
        app = CompareApp(state)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: all("finished" in cells(app, i) for i in range(3)))
            step = app.table.columns[ColumnKey("step")]
            assert step.get_render_width(app.table) >= len(" 60/60 ")  # grown with its value
            await pilot.resize_terminal(160, 48)  # as a tmux window resized: laid out again
            await until(pilot, lambda: sum(p.display for p in app.plots) == 7)
            await pilot.resize_terminal(80, 24)
            await until(pilot, lambda: sum(p.display for p in app.plots) == 2)
            _burst(app, "down", "space", "down", "enter")
            # leaving run_test does not drain queued keys: wait for enter's exit
            await until(pilot, lambda: app.return_value is not None)
        assert app.return_value == Focus(2)
        assert [run.marked for run in state.runs] == [False, True, False]

    async def picker() -> None:
        app = RunPicker(tmp_path)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: len(app.runs) == 3)
            _burst(app, "down", "enter")
            await until(pilot, lambda: app.return_value is not None)
        assert app.return_value == app.runs[1].path

    try:
        asyncio.run(compare())
        asyncio.run(picker())
    finally:
        state.close()
