"""Runs the dashboard over a local session, and keeps training when the terminal goes away."""

from __future__ import annotations

import os
import signal
import traceback

from gantui.headless import LinePrinter, finish, run_headless
from gantui.session import Session
from gantui.ui.app import GantuiApp, Outcome


def run_dashboard(session: Session) -> int:
    """Show the dashboard for ``session``; returns the process exit code.

    SIGHUP (a dropped SSH connection) closes the dashboard and training carries on headless,
    journaled in ``events.jsonl``; SIGTERM asks for a checkpoint and stop. Leaving with
    "keep training" (``q`` then ``d``) continues headless in this terminal.
    """
    app = GantuiApp(session.queue.drain, session.controller, attached=False,
                    title=f"gantui · {session.run_dir.name}")
    hung_up = False

    def on_hup(_signum, _frame) -> None:
        nonlocal hung_up
        hung_up = True
        app.exit(Outcome("detach", session.state, session.trainer.step))

    def on_term(_signum, _frame) -> None:
        session.controller.stop(source="SIGTERM")
        app.exit(Outcome("detach", session.state, session.trainer.step))

    previous = {sig: signal.signal(sig, handler)
                for sig, handler in ((signal.SIGHUP, on_hup), (signal.SIGTERM, on_term))}
    crashed: BaseException | None = None
    try:
        outcome = app.run()
    except Exception as exc:  # the dashboard broke; the run must not die with it
        crashed, outcome = exc, None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

    if hung_up:
        _detach_from_terminal()
        session.controller.journal("disconnect", "terminal disconnected (SIGHUP): the dashboard "
                                   "closed and training continues headless; reattach with "
                                   f"gantui watch {session.run_dir}")
        return run_headless(session)
    if crashed is not None:
        session.controller.journal("error", f"the dashboard crashed ({type(crashed).__name__}: "
                                   f"{crashed}); training continues headless")
        traceback.print_exception(crashed)
        return run_headless(session)
    if outcome is None or outcome.detached:
        return run_headless(session)
    session.join()
    return finish(session, LinePrinter())


def _detach_from_terminal() -> None:
    """Point stdin/stdout/stderr at /dev/null so writes to the dead terminal cannot fail."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        try:
            os.dup2(devnull, fd)
        except OSError:
            pass
    os.close(devnull)
