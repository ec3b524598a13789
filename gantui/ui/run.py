"""Runs the dashboard over a local session, and keeps training when the terminal goes away.

The terminal can go in three ways: a hang-up (SIGHUP: the SSH connection dropped), a terminal
that stops reading (a hung connection: writes would block for good) and one that vanishes
without a signal (input ends, writes fail). Each closes the dashboard, and training carries on
headless, journaled; a stop ends the process within seconds whatever the terminal does.
"""

from __future__ import annotations

import signal
import sys
import traceback
from collections.abc import Callable

from gantui.headless import LinePrinter, finish, run_headless, terminal_out
from gantui.procs import detach_from_terminal
from gantui.session import Session
from gantui.terminal import STALL_S, TerminalOutput, TerminalWatch
from gantui.ui.app import GantuiApp, Outcome
from gantui.ui.tty import draw_through


class Hangup:
    """Catches SIGHUP from the moment it is made, before the dashboard is even up, so a
    connection that drops during start-up cannot kill the run; also told of a terminal that
    stopped reading or vanished without the signal (:meth:`lose`)."""

    def __init__(self) -> None:
        self.reason: str | None = None
        """How the terminal was lost, or None while it is there."""
        self.on_hangup: Callable[[], None] | None = None
        signal.signal(signal.SIGHUP, self._handle)

    @property
    def received(self) -> bool:
        """True once the terminal is lost."""
        return self.reason is not None

    def _handle(self, _signum, _frame) -> None:
        self.lose("terminal disconnected (SIGHUP)")

    def lose(self, reason: str) -> None:
        """The terminal is gone (any thread; repeats are harmless): close the dashboard."""
        if self.reason is None:
            self.reason = reason
        if self.on_hangup is not None:
            self.on_hangup()


def run_dashboard(session: Session, hangup: Hangup | None = None) -> int:
    """Show the dashboard for ``session``; returns the process exit code.

    A lost terminal (SIGHUP from a dropped SSH connection, a terminal that has taken no
    output for :data:`~gantui.terminal.STALL_S` seconds, or one whose input ended) closes the
    dashboard and training carries on headless, journaled in ``events.jsonl``; SIGTERM asks
    for a checkpoint and stop. Leaving with "keep training" (``q`` then ``d``) continues
    headless in this terminal.
    """
    hangup = hangup or Hangup()
    if hangup.reason is not None:
        return _continue_after_hangup(session, hangup.reason)
    app = GantuiApp(session.queue.drain, session.controller, attached=False,
                    title=f"gantui · {session.run_dir.name}")
    stopping = lambda: session.trainer.stopping  # noqa: E731 - read by another thread
    output = TerminalOutput(sys.__stderr__, STALL_S, hurry=stopping)
    draw_through(app, output)

    def leave() -> None:
        app.exit(Outcome("detach", session.state, session.trainer.step))

    def on_term(_signum, _frame) -> None:
        session.controller.stop(source="SIGTERM")
        leave()

    hangup.on_hangup = leave
    previous_term = signal.signal(signal.SIGTERM, on_term)
    watch = TerminalWatch(output, hangup.lose).start()
    crashed: BaseException | None = None
    try:
        outcome = app.run()
    except Exception as exc:  # the dashboard broke; the run must not die with it
        crashed, outcome = exc, None
    finally:
        watch.close()
        signal.signal(signal.SIGTERM, previous_term)
        hangup.on_hangup = None
        reason = hangup.reason or watch.check()  # also a loss the app exited before hearing of
        output.close()

    if reason is not None:
        return _continue_after_hangup(session, reason)
    if crashed is not None:
        session.controller.journal("error", f"the dashboard crashed ({type(crashed).__name__}: "
                                   f"{crashed}); training continues headless")
        traceback.print_exception(crashed)
        return run_headless(session)
    if outcome is None or outcome.detached:
        return run_headless(session)
    session.join()
    return finish(session, LinePrinter(terminal_out(session)))


def _continue_after_hangup(session: Session, reason: str) -> int:
    detach_from_terminal()
    session.controller.journal("disconnect", f"{reason}: the dashboard closed and training "
                               f"continues headless; reattach with gantui watch "
                               f"{session.run_dir}")
    return run_headless(session)
