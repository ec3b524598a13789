"""Runs the dashboard over a local session, and keeps training when the terminal goes away."""

from __future__ import annotations

import os
import signal
import traceback
from collections.abc import Callable

from gantui.headless import LinePrinter, finish, run_headless
from gantui.session import Session
from gantui.ui.app import GantuiApp, Outcome


class Hangup:
    """Catches SIGHUP from the moment it is made, before the dashboard is even up, so a
    connection that drops during start-up cannot kill the run."""

    def __init__(self) -> None:
        self.received = False
        self.on_hangup: Callable[[], None] | None = None
        signal.signal(signal.SIGHUP, self._handle)

    def _handle(self, _signum, _frame) -> None:
        self.received = True
        if self.on_hangup is not None:
            self.on_hangup()


def run_dashboard(session: Session, hangup: Hangup | None = None) -> int:
    """Show the dashboard for ``session``; returns the process exit code.

    SIGHUP (a dropped SSH connection) closes the dashboard and training carries on headless,
    journaled in ``events.jsonl``; SIGTERM asks for a checkpoint and stop. Leaving with
    "keep training" (``q`` then ``d``) continues headless in this terminal.
    """
    hangup = hangup or Hangup()
    if hangup.received:
        return _continue_after_hangup(session)
    app = GantuiApp(session.queue.drain, session.controller, attached=False,
                    title=f"gantui · {session.run_dir.name}")

    def leave() -> None:
        app.exit(Outcome("detach", session.state, session.trainer.step))

    def on_term(_signum, _frame) -> None:
        session.controller.stop(source="SIGTERM")
        leave()

    hangup.on_hangup = leave
    previous_term = signal.signal(signal.SIGTERM, on_term)
    crashed: BaseException | None = None
    try:
        outcome = app.run()
    except Exception as exc:  # the dashboard broke; the run must not die with it
        crashed, outcome = exc, None
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        hangup.on_hangup = None

    if hangup.received:
        return _continue_after_hangup(session)
    if crashed is not None:
        session.controller.journal("error", f"the dashboard crashed ({type(crashed).__name__}: "
                                   f"{crashed}); training continues headless")
        traceback.print_exception(crashed)
        return run_headless(session)
    if outcome is None or outcome.detached:
        return run_headless(session)
    session.join()
    return finish(session, LinePrinter())


def _continue_after_hangup(session: Session) -> int:
    _detach_from_terminal()
    session.controller.journal("disconnect", "terminal disconnected (SIGHUP): the dashboard "
                               "closed and training continues headless; reattach with "
                               f"gantui watch {session.run_dir}")
    return run_headless(session)


def _detach_from_terminal() -> None:
    """Point stdin/stdout/stderr at /dev/null so writes to the dead terminal cannot fail."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        try:
            os.dup2(devnull, fd)
        except OSError:
            pass
    os.close(devnull)
