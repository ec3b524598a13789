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
