"""The compare view tells what happens to any of its runs as ``gantui watch`` does for one: a
notice for the terminal and the ``--notify`` command, none for what the runs did before."""

from __future__ import annotations

import json
from pathlib import Path

from gantui import events as ev
from gantui.notify import Notice
from gantui.studies.runset import resolve
from gantui.ui.compare import CompareState

from .conftest import cli
from .test_compare_view import make_sweep
from .test_notify import RECORD, _lines


def test_the_compare_view_tells_what_happens_from_now_on(finished_ring: Path,
                                                         tmp_path: Path) -> None:
    sweep = make_sweep(finished_ring, tmp_path, 2)
    out = tmp_path / "told.txt"
    state = CompareState(resolve([sweep]), notify=RECORD.format(out=out))
    try:
        state.poll()  # the history: two finished runs, told to no one
        assert state.told == [] and all(r.model.state == "finished" for r in state.runs)
        second = state.runs[1].ref.path
        with open(second / "events.jsonl", "a") as journal:
            journal.write(json.dumps(ev.to_record(ev.Alert(60, "collapse", "diversity fell")))
                          + "\n")
        state.poll()
        name = state.runs[1].model.name  # the journal's (a copy keeps the original's)
        assert state.told == [Notice("warning", "collapse", name, 60, "diversity fell")]
    finally:
        state.close()  # the command has run
    assert _lines(out) == [[name, "warning", "collapse", "60", "diversity fell"]]
    # gantui watch SWEEP --notify takes the command (no terminal here: one line, exit 1)
    result = cli("watch", str(sweep), "--notify", "true")
    assert result.returncode == 1 and "compare view needs a terminal" in result.stderr


def test_a_focused_run_leaves_the_others_told_as_they_happen(
        finished_ring: Path, tmp_path: Path, monkeypatch) -> None:
    """Enter on a run shows its dashboard; what happens meanwhile to the other runs reaches
    the terminal (and their --notify command) then, not once the view is back. The focused
    run's own notice comes from its dashboard, once."""
    import asyncio

    from gantui.notify import TERMINAL_ENV, terminal_escape
    from gantui.ui.compare import dashboard_for

    from .conftest import until

    monkeypatch.setenv(TERMINAL_ENV, "osc9")
    sweep = make_sweep(finished_ring, tmp_path, 2)
    out = tmp_path / "told.txt"
    state = CompareState(resolve([sweep]), notify=RECORD.format(out=out))
    state.poll()  # the history, as the compare view read it before Enter
    app = dashboard_for(state, 0)
    written: list[str] = []

    def alert(run: int, message: str) -> None:
        with open(state.runs[run].ref.path / "events.jsonl", "a") as journal:
            journal.write(json.dumps(ev.to_record(ev.Alert(60, "collapse", message))) + "\n")

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            write = app._driver.write
            app._driver.write = lambda data: (written.append(data), write(data))[-1]
            alert(1, "the other run fell")
            alert(0, "the focused run fell")
            await until(pilot, lambda: sum("fell" in w for w in written) == 2)
            await pilot.pause(0.3)  # a third (the focused run's, twice) would come by now
            await pilot.press("q")

    try:
        asyncio.run(main())
        told = [w for w in written if "fell" in w]
        assert sorted(told) == sorted(
            terminal_escape(Notice("warning", "collapse", state.runs[i].model.name, 60, m))
            for i, m in ((1, "the other run fell"), (0, "the focused run fell"))), told
        assert state.told == []  # nothing left over for the compare view to tell again
    finally:
        state.close()
    assert sorted(line[-1] for line in _lines(out)) == ["the focused run fell",
                                                        "the other run fell"]
