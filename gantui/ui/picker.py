"""The run picker: ``gantui watch`` without a run lists the runs and returns the one chosen.

A table of the runs under a runs directory (and of the runs inside its sweeps), newest first,
rescanned on a timer. Enter picks a run, ``x`` stops a live one over its control socket after
asking, ``q`` leaves without a choice. Space marks runs: Enter then opens them together in the
compare view (:mod:`gantui.ui.compare`). Everything shown comes from disk, so every string goes
through :func:`~gantui.text.safe` into a rich :class:`~rich.text.Text` (never markup).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.widgets import DataTable, Footer, Static

from gantui.remote import RemoteController
from gantui.run.lock import is_locked
from gantui.run.runs import ENDED_STATES, RunInfo, format_age, scan_runs
from gantui.text import safe
from gantui.ui.modals import ChoiceModal

NOT_LIVE = (*ENDED_STATES, "crashed", "unreadable")
"""States of a run no process owns: nothing to stop."""

STATE_STYLES = {
    "running": "bold green", "paused": "bold yellow", "starting": "green",
    "finished": "", "stopped": "yellow", "error": "bold red", "crashed": "red",
    "unreadable": "magenta",
}
"""How each state is drawn in the table (unknown ones plainly)."""

COLUMNS = (("Name", "name"), ("Preset", "preset"), ("State", "state"), ("Step", "step"),
           ("Quality", "quality"), ("Age", "age"))
"""The table's ``(label, key)`` columns."""


def list_runs(runs_dir: Path, is_live: Callable[[Path], bool] = is_locked) -> list[RunInfo]:
    """The runs directly under ``runs_dir`` and those inside its sweeps (folders holding a
    ``sweep.json``, listed as ``sweep/run``), most recently updated first.

    Args:
        runs_dir: the runs directory; a missing one gives no runs.
        is_live: whether a process owns a run directory (see :func:`gantui.run.lock.is_locked`).
    """
    runs = scan_runs(runs_dir, is_live)
    try:
        sweeps = [p for p in runs_dir.iterdir()
                  if p.is_dir() and (p / "sweep.json").is_file()
                  and not (p / "config.toml").exists()]
    except OSError:
        sweeps = []
    for sweep in sweeps:
        runs += [dataclasses.replace(info, name=f"{sweep.name}/{info.name}")
                 for info in scan_runs(sweep, is_live)]
    return sorted(runs, key=lambda r: (r.updated, r.name), reverse=True)


def is_live(info: RunInfo) -> bool:
    """True when a process owned the run at the last scan (so it can be stopped)."""
    return info.state not in NOT_LIVE


def row_cells(info: RunInfo, now: float, marked: bool = False) -> list[Text]:
    """One table row: name (``●`` before it when marked), preset, state, ``step/total``,
    quality and age, as plain text."""
    step = f"{info.step}/{info.total_steps}" if info.total_steps else str(info.step)
    return [
        Text(("● " if marked else "") + safe(info.name, 60), style="bold" if marked else ""),
        Text(safe(info.preset, 30)),
        Text(safe(info.state, 20), style=STATE_STYLES.get(info.state, "")),
        Text(step, justify="right"),
        Text(info.quality or "-"),
        Text(format_age(now - info.updated), justify="right"),
    ]


class RunsTable(DataTable):
    """The runs' table. Enter is its own select key, so it acts on the row the keys typed
    just before it chose (an app's priority key would overtake them): the picker opens the
    selected run, or the marked ones."""

    BINDINGS: ClassVar = [Binding("enter", "select_cursor", "Watch")]


class RunPicker(App[Path | list[Path] | None]):
    """Lists the runs under a runs directory; exits with the chosen run's path, the marked
    runs' paths (to compare them), or None."""

    CSS_PATH = Path(__file__).with_name("picker.tcss")  # absolute: subclasses live elsewhere
    TITLE = "gantui runs"
    ENABLE_COMMAND_PALETTE = False

    BINDINGS: ClassVar = [
        Binding("space", "mark", "Mark to compare"),  # Enter is the table's (RunsTable)
        Binding("x", "stop_run", "Stop run"),
        Binding("r", "rescan", "Refresh"),
        Binding("q", "quit", "Quit"),
        Binding("escape", "quit", "Quit", show=False),
    ]

    def __init__(self, runs_dir: Path, refresh_s: float = 2.0) -> None:
        """
        Args:
            runs_dir: the folder whose runs (and sweeps' runs) are listed.
            refresh_s: seconds between rescans of ``runs_dir``.
        """
        super().__init__()
        self.runs_dir = runs_dir
        self.refresh_s = refresh_s
        self.runs: list[RunInfo] = []
        """The rows of the table, in table order, as of the last scan."""
        self.stopping: dict[Path, tuple[str, Future, RemoteController]] = {}
        """Stop requests in flight, by run directory: (shown name, future, its controller)."""
        self.scanning = False
        """True while a scan runs in its thread."""
        self.marked: set[Path] = set()
        """Runs marked (space) to open together in the compare view."""

    # ---- layout ------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="heading")
        table: DataTable = RunsTable(id="runs", cursor_type="row", zebra_stripes=True)
        for label, key in COLUMNS:
            table.add_column(label, key=key)
        yield table
        yield Static(Text(f"no runs under {safe(self.runs_dir, 200)} yet; start one with "
                          f"gantui train"), id="empty")
        yield Footer()

    def on_mount(self) -> None:
        self.show_runs(list_runs(self.runs_dir))  # the first scan at once: no empty flash
        self.set_interval(self.refresh_s, self.rescan)
        self.set_interval(0.2, self.check_stops)
        self.query_one(DataTable).focus()

    # ---- state -------------------------------------------------------------------------------

    class Scanned(Message):
        """A scan of the runs directory finished (posted from the scanning thread)."""

        def __init__(self, runs: list[RunInfo]) -> None:
            super().__init__()
            self.runs = runs

    @property
    def selected(self) -> RunInfo | None:
        """The run under the cursor, None when the table is empty."""
        row = self.query_one(DataTable).cursor_row
        return self.runs[row] if 0 <= row < len(self.runs) else None

    def rescan(self) -> None:
        """Read the runs directory again, in a thread (a slow disk never freezes the keys);
        the table is redrawn when it is done. A scan still under way is not doubled."""
        if not self.scanning:
            self.scanning = True
            self.run_worker(self._scan, name="scan-runs", thread=True)

    def _scan(self) -> None:
        self.post_message(self.Scanned(list_runs(self.runs_dir)))  # thread-safe

    def on_run_picker_scanned(self, message: Scanned) -> None:
        self.scanning = False
        self.show_runs(message.runs)

    def show_runs(self, runs: list[RunInfo]) -> None:
        """Redraw the table with ``runs``, the cursor staying on the same run (or on the same
        row when that run has gone)."""
        table = self.query_one(DataTable)
        before, row = self.selected, table.cursor_row
        self.runs = runs
        now = time.time()
        table.clear()
        for info in runs:
            table.add_row(*row_cells(info, now, info.path in self.marked), key=str(info.path))
        paths = [info.path for info in runs]
        if before is not None and before.path in paths:
            row = paths.index(before.path)
        if runs:
            table.move_cursor(row=min(max(row, 0), len(runs) - 1), animate=False)
        live = sum(is_live(info) for info in runs)
        self.query_one("#heading", Static).update(Text(
            f"{len(runs)} run{'' if len(runs) == 1 else 's'} under "
            f"{safe(self.runs_dir, 200)}, {live} live"
            + (f", {len(self.marked)} marked (Enter compares them)" if self.marked else "")))
        table.screen.set_class(not runs, "-empty")
        self.refresh_bindings()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("open", "stop_run", "mark") and self.screen is not self.screen_stack[0]:
            return False  # a dialog is open: its keys go to it
        info = self.selected
        if action in ("open", "mark"):
            return info is not None
        if action == "stop_run":
            return info is not None and is_live(info) and info.path not in self.stopping
        return True

    # ---- keys --------------------------------------------------------------------------------

    def action_open(self) -> None:
        """Leave with the selected run, to watch it, or with the marked runs, to compare them."""
        marked = [info.path for info in self.runs if info.path in self.marked]
        if marked:
            self.exit(marked)
            return
        info = self.selected
        if info is not None:
            self.exit(info.path)

    def action_mark(self) -> None:
        """Mark or unmark the selected run for the compare view."""
        info = self.selected
        if info is None:
            return
        self.marked ^= {info.path}
        self.show_runs(self.runs)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        """Enter, or a row picked with the mouse, opens that run (or the marked ones)."""
        self.action_open()

    def on_data_table_row_highlighted(self) -> None:
        if not self.screen_stack:  # a rescan's highlight arriving while the app closes
            return
        self.refresh_bindings()  # x applies to some runs only

    def action_rescan(self) -> None:
        """Read the runs directory now."""
        self.rescan()

    def action_quit(self) -> None:
        """Leave without choosing a run."""
        self.exit(None)

    def action_stop_run(self) -> None:
        """Stop the selected live run, after asking (its checkpoint is written first)."""
        info = self.selected
        if info is None:
            return
        name = safe(info.name, 60)
        self.push_screen(ChoiceModal(Text(f"Stop {name}? A checkpoint is written first."),
                                     [("s", "Checkpoint and stop", "stop"),
                                      ("n", "Cancel", "cancel")]),
                         lambda answer: self._stop_answer(info, answer))

    def key_x(self) -> None:
        """``x`` when :meth:`check_action` refused ``stop_run``: say why, do nothing."""
        if self.screen is not self.screen_stack[0]:
            return
        info = self.selected
        if info is None:
            self.notify("no run selected", markup=False)
        elif info.path in self.stopping:
            self.notify(f"{safe(info.name, 60)} is already stopping", markup=False)
        else:
            self.notify(f"{safe(info.name, 60)} is not live ({safe(info.state, 20)}); nothing "
                        f"to stop", markup=False)

    def _stop_answer(self, info: RunInfo, answer: str | None) -> None:
        if answer != "stop":
            return
        controller = RemoteController(info.path, source="picker")
        self.stopping[info.path] = (safe(info.name, 60), controller.stop(source="picker"),
                                    controller)
        self.notify(f"stopping {safe(info.name, 60)}: checkpoint, then end", markup=False)
        self.refresh_bindings()

    def check_stops(self) -> None:
        """Report the stop requests that were answered (polled: the answers come from the
        controller's worker threads)."""
        for path, (name, future, controller) in list(self.stopping.items()):
            if not future.done():
                continue
            del self.stopping[path]
            controller.close()
            error = future.exception()
            if error is not None:
                self.notify(f"could not stop {name}: {safe(error, 300)}", severity="error",
                            markup=False)
            else:
                ack: dict[str, Any] = future.result()
                self.notify(f"{name} is stopping at step {safe(ack.get('step', '?'))}",
                            markup=False)
            self.rescan()

    def on_unmount(self) -> None:
        for _name, _future, controller in self.stopping.values():
            controller.close()


def pick_run(runs_dir: Path, refresh_s: float = 2.0) -> Path | list[Path] | None:
    """Show the picker over ``runs_dir`` in this terminal; the chosen run's directory, the
    marked runs' directories, or None when the user quit without choosing."""
    return RunPicker(runs_dir, refresh_s).run()
