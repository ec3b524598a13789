"""The dashboard on a terminal that may stop reading or vanish: it draws through a
:class:`~gantui.terminal.TerminalOutput`, so no write waits on the terminal for good."""

from __future__ import annotations

import sys

from gantui.procs import detach_from_terminal
from gantui.terminal import STALL_S, TerminalOutput, TerminalWatch
from gantui.ui.app import GantuiApp


def run_follower(app: GantuiApp) -> None:
    """Run ``gantui watch``'s dashboard; a terminal that is lost (SIGHUP aside, which ends the
    process) ends it: it has nothing to carry on with."""
    output = TerminalOutput(sys.__stderr__, STALL_S)
    draw_through(app, output)
    watch = TerminalWatch(output, lambda _reason: app.exit()).start()
    try:
        app.run()
    finally:
        watch.close()
        output.close()
        if watch.lost is not None:
            detach_from_terminal()


def draw_through(app: GantuiApp, output: TerminalOutput) -> None:
    """Make ``app`` draw through ``output`` instead of blocking on the terminal for good (on
    Textual's Linux driver; a web or Windows driver is left as it is)."""
    from textual.drivers.linux_driver import LinuxDriver

    if app.driver_class is not LinuxDriver:
        return

    class Driver(LinuxDriver):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._file = output  # what Textual's writer thread writes to (sys.__stderr__)

    app.driver_class = Driver
