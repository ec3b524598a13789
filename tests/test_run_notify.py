"""A script's own run (gantui.api) runs the notify command as ``gantui train`` does: given to
``gantui run --notify`` or to ``init(notify=...)``, told the run's end (finished, crashed) in
the ``GANTUI_*`` variables, its failure journaled, never raised into the loop."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

import gantui.api as gantui
from gantui.notify import COMMAND_ENV
from gantui.run.store import RunStore

from .conftest import cli
from .test_run_script import toy


def _appending(path: Path) -> str:
    """A notify command that appends one line per notice to ``path``."""
    return ('printf "%s|%s|%s|%s\\n" "$GANTUI_EVENT" "$GANTUI_STEP" "$GANTUI_RUN" '
            f'"$GANTUI_MESSAGE" >> {shlex.quote(str(path))}')


def test_gantui_run_notify_tells_a_scripts_crash(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    told = tmp_path / "told.txt"
    out = cli("run", "--notify", _appending(told), str(toy(tmp_path)), "--name", "boom",
              "--steps", "50", "--raise-at", "7", "--no-ui", cwd=tmp_path)
    assert out.returncode == 1 and "ZeroDivisionError" in out.stdout
    [line] = told.read_text().splitlines()  # the crash, once (its error alert is no notice)
    event, step, run, message = line.split("|")
    assert (event, step, run) == ("crashed", "7", "boom")
    assert message == "ZeroDivisionError: the toy divides by zero"


def test_init_notify_tells_the_finish_and_journals_a_failing_command(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(COMMAND_ENV, raising=False)
    told = tmp_path / "told.txt"
    for name, command in (("done", _appending(told)), ("broken", "echo no mail here >&2; exit 3")):
        with gantui.init(name=name, runs_dir=tmp_path / "runs", echo=False, system=False,
                         notify=command) as run:
            for step in range(3):
                run.step(step)
                run.log(step + 1, loss=1.0)
    assert told.read_text().splitlines() == ["finished|3|done|finished at step 3"]
    events = RunStore.open(tmp_path / "runs" / "broken").events()
    assert events[-2]["state"] == "finished"  # the failure after the end it was about
    assert events[-1]["kind"] == "notify"
    assert "exit status 3: no mail here" in events[-1]["message"]
