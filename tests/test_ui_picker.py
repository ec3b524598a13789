"""The run picker driven through Pilot over a real runs directory: a finished run, a crashed
copy of it, a damaged folder, a sweep, a live in-process run, and folders that are not runs."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from gantui.headless import follow
from gantui.session import Session, start
from gantui.ui.modals import ChoiceModal
from gantui.ui.picker import RunPicker

from .conftest import tiny, until

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = (100, 30)
EVIL = "evil[bold]\x1b[31m"
"""A run directory name with markup and an escape sequence in it."""


class Picker(RunPicker):
    """The real picker, remembering what it told the user."""

    def __init__(self, runs_dir: Path, refresh_s: float = 60.0) -> None:
        super().__init__(runs_dir, refresh_s)
        self.said: list[str] = []

    def notify(self, message: str, **kwargs) -> None:  # noqa: ANN003 - App.notify's options
        self.said.append(message)
        super().notify(message, **kwargs)


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real finished tiny run."""
    runs_dir = tmp_path_factory.mktemp("made")
    session = start(tiny("ring-8", "eval_every=0"), "ring-8", runs_dir=runs_dir, name="done",
                    device="cpu")
    follow(session, 60)
    assert not session.error and session.state == "finished"
    return session.run_dir


def copy_run(source: Path, dest: Path, *, age: float = 0.0) -> Path:
    """Copy a run directory, its journals dated ``age`` seconds ago; it appears in ``dest``'s
    folder whole (a rename), so a scan never sees half of it."""
    staging = dest.parent.parent / f".staging-{dest.name}"
    shutil.copytree(source, staging)
    when = time.time() - age
    for name in ("events.jsonl", "metrics.jsonl", "config.toml"):
        os.utime(staging / name, (when, when))
    staging.rename(dest)
    return dest


def crash(run_dir: Path, *, age: float) -> None:
    """Rewrite the journal so that its last state is ``running`` (and no process holds it),
    dated ``age`` seconds ago."""
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    kept = [line for line in lines if json.loads(line).get("state") != "finished"]
    kept.append(json.dumps({"event": "state", "step": 30, "state": "running"}))
    (run_dir / "events.jsonl").write_text("\n".join(kept) + "\n")
    when = time.time() - age
    for name in ("events.jsonl", "metrics.jsonl"):
        os.utime(run_dir / name, (when, when))


@pytest.fixture
def runs(tmp_path: Path, finished: Path) -> Path:
    """A runs directory with one of each kind of folder (no live run)."""
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    copy_run(finished, runs_dir / "done", age=300)
    crash(copy_run(finished, runs_dir / "crashed"), age=200)
    damaged = runs_dir / "damaged"
    damaged.mkdir()
    (damaged / "config.toml").write_text("this is = = not toml")
    os.mkfifo(damaged / "events.jsonl")  # a reader that opened it would hang
    (damaged / "metrics.jsonl").write_bytes(b'{"step": 3, "loss_d": 1\n\xff\x00')
    (runs_dir / "notes").mkdir()
    (runs_dir / "notes" / "todo.txt").write_text("not a run")
    sweep = runs_dir / "lr-sweep"
    sweep.mkdir()
    (sweep / "sweep.json").write_text(json.dumps({"version": 1, "name": "lr-sweep"}))
    copy_run(finished, sweep / "lr_g=1e-4", age=100)
    copy_run(finished, runs_dir / EVIL, age=400)
    return runs_dir


def shown(app: RunPicker) -> dict[str, str]:
    """What the table shows: the state column by name column."""
    table = app.query_one(DataTable)
    rows = [table.get_row_at(i) for i in range(table.row_count)]
    return {row[0].plain: row[2].plain for row in rows}


def select(app: RunPicker, path: Path) -> None:
    """Put the cursor on the run at ``path``."""
    app.query_one(DataTable).move_cursor(row=[r.path for r in app.runs].index(path))


def stop_live(session: Session) -> None:
    """End a live session whatever the test did."""
    if session.alive:
        session.controller.stop(source="test")
    session.join(30)
    assert not session.alive


def test_states_and_enter_returns_the_selected_run(runs: Path) -> None:
    async def main() -> None:
        app = Picker(runs)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            assert shown(app) == {
                "lr-sweep/lr_g=1e-4": "finished", "crashed": "crashed", "done": "finished",
                "evil[bold]\\x1b[31m": "finished", "damaged": "unreadable",
            }
            assert [r.name for r in app.runs][:3] == ["damaged", "lr-sweep/lr_g=1e-4", "crashed"]
            assert not app.query_one("#empty").display and app.query_one(DataTable).display
            select(app, runs / "crashed")
            await pilot.press("down")  # the cursor moves to the next (older) run: done
            assert app.selected is not None and app.selected.path == runs / "done"
            await pilot.press("up", "enter")
        assert app.return_value == runs / "crashed"

    asyncio.run(main())


def test_quit_returns_none(runs: Path) -> None:
    async def main() -> None:
        for key in ("q", "escape"):
            app = Picker(runs)
            async with app.run_test(size=SIZE) as pilot:
                await pilot.press(key)
            assert app.return_value is None

    asyncio.run(main())


def test_x_is_refused_for_runs_without_a_process(runs: Path) -> None:
    async def main() -> None:
        app = Picker(runs)
        async with app.run_test(size=SIZE) as pilot:
            for name in ("done", "crashed", "damaged"):
                select(app, runs / name)
                await pilot.pause()
                assert "x" not in app.screen.active_bindings  # hidden from the footer
                await pilot.press("x")
                assert not isinstance(app.screen, ChoiceModal)
                assert app.said[-1].startswith(f"{name} is not live")
            assert app.is_running and app.stopping == {}
            select(app, runs / "done")
            shutil.rmtree(runs / "done")  # no timer runs in this test (refresh_s=60): r rescans
            await pilot.press("r")
            await until(pilot, lambda: "done" not in shown(app))
            assert len(shown(app)) == 4
            # The selected run has gone: the cursor stays on its row, now the next older run.
            assert app.selected is not None and app.selected.path == runs / EVIL

    asyncio.run(main())


def test_x_stops_a_live_run_after_asking(runs: Path) -> None:
    async def main() -> None:
        session = start(tiny("ring-8", "steps=100000", "eval_every=0"), "ring-8", runs_dir=runs,
                        name="live", device="cpu")
        try:
            app = Picker(runs, refresh_s=0.2)
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: shown(app).get("live") == "running")
                assert app.runs[0].path == session.run_dir  # it writes: the newest
                # Paused, it is still live (and leaves the shared CPUs to Pilot's idle waits).
                session.controller.pause(source="test").result(30)
                await until(pilot, lambda: shown(app).get("live") == "paused")
                select(app, runs / "done")
                await pilot.pause()
                select(app, session.run_dir)
                await pilot.pause()
                assert "x" in app.screen.active_bindings
                await pilot.press("x")
                await until(pilot, lambda: isinstance(app.screen, ChoiceModal))
                await pilot.press("n")  # cancel: nothing sent
                await pilot.pause()
                assert not isinstance(app.screen, ChoiceModal) and session.state == "paused"
                await pilot.press("x")
                await until(pilot, lambda: isinstance(app.screen, ChoiceModal))
                await pilot.press("s")
                await until(pilot, lambda: not session.alive)
                session.join(30)
                assert session.state == "stopped" and not session.error
                await until(pilot, lambda: shown(app).get("live") == "stopped")
                # The answer is polled apart from the table's rescan; either may come first.
                await until(pilot, lambda: any(m.startswith("live is stopping at step")
                                               for m in app.said))
                assert app.selected is not None and app.selected.path == session.run_dir
                assert "x" not in app.screen.active_bindings and app.stopping == {}
        finally:
            stop_live(session)

    asyncio.run(main())


def test_the_table_follows_new_runs_and_keeps_the_cursor(runs: Path,
                                                               finished: Path) -> None:
    async def main() -> None:
        app = Picker(runs, refresh_s=0.2)
        async with app.run_test(size=SIZE) as pilot:
            select(app, runs / "done")
            await pilot.pause()
            copy_run(finished, runs / "newer")
            await until(pilot, lambda: "newer" in shown(app))
            assert app.runs[0].name == "newer"
            assert app.selected is not None and app.selected.path == runs / "done"

    asyncio.run(main())


@pytest.mark.parametrize("exists", [True, False])
def test_no_runs_says_how_to_start_one(tmp_path: Path, exists: bool) -> None:
    async def main() -> None:
        runs_dir = tmp_path / "runs"
        if exists:
            (runs_dir / "not-a-run").mkdir(parents=True)
        app = Picker(runs_dir, refresh_s=0.1)
        async with app.run_test(size=SIZE) as pilot:
            await pilot.pause()
            empty = app.query_one("#empty", Static)
            assert empty.display and not app.query_one(DataTable).display
            assert str(empty.content) == (f"no runs under {runs_dir} yet; start one with "
                                          f"gantui train")
            assert all(b.binding.action != "open" for b in app.screen.active_bindings.values())
            await pilot.press("enter", "x")
            assert app.is_running and app.said == ["no run selected"]
            (runs_dir / "first").mkdir(parents=True)
            (runs_dir / "first" / "config.toml").write_text("steps = 10\n")
            await until(pilot, lambda: "first" in shown(app))
            assert not empty.display and app.query_one(DataTable).display
            assert app.focused is app.query_one(DataTable)  # the keys reach the table
            await pilot.press("q")
        assert app.return_value is None

    asyncio.run(main())
