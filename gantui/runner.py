"""``gantui run SCRIPT.py [ARGS...]``: a user's own training script (one that uses
:mod:`gantui.api`) in a child process, with the dashboard following its run directory as
``gantui watch`` does, or headless (its output printed) without a terminal.

The script runs as a :class:`gantui.procs.Child` in a session of its own, started through
this module (``python -m gantui.runner SCRIPT ARGS``), which watches the lifeline first and
then runs the script as ``python SCRIPT`` would: however the launcher ends (SIGKILL
included), the script gets SIGTERM (it checkpoints and stops at its next step boundary) and
is killed :data:`gantui.procs.GRACE_S` later if it has not ended. A terminal reaches the
script only through the launcher: SIGINT and SIGTERM are forwarded as SIGTERM (a second one
kills it); SIGHUP (a dropped connection) only takes the terminal away, and the script trains
on, as under ``gantui train``. The script tells the launcher its run directory through the
file named in ``GANTUI_RUN_ANNOUNCE``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path

from gantui import procs
from gantui.errors import GantuiError
from gantui.notify import COMMAND_ENV

ANNOUNCE_ENV = "GANTUI_RUN_ANNOUNCE"  # the same name as gantui.api.ANNOUNCE_ENV
FOLDER_PREFIX = "gantui-run-"
"""The launcher's temporary folder (it holds the announce file) starts with this."""
TAIL_LINES = 40
"""The script's last output lines shown after the dashboard closes."""


def run_script(script: Path, args: list[str], *, dashboard: bool, out=None,
               notify: str | None = None) -> int:
    """Run ``script`` with ``args`` in a child Python and follow it; returns its exit code.
    ``notify``: the command its run runs when it finishes, crashes or warns (handed to
    :mod:`gantui.api` in ``GANTUI_NOTIFY``).

    Raises:
        GantuiError: no such script.
    """
    out = out if out is not None else sys.stdout
    if not script.is_file():
        raise GantuiError(f"no script at {script}")
    folder = Path(tempfile.mkdtemp(prefix=FOLDER_PREFIX))
    announce = folder / "run_dir"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{ANNOUNCE_ENV: str(announce)})
    if notify:
        env[COMMAND_ENV] = notify
    try:
        proc = procs.Child(
            [sys.executable, "-m", "gantui.runner", str(script), *args], env=env, group=True,
            stdin=subprocess.DEVNULL if dashboard else None, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace")
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise GantuiError(f"cannot start {script}: {exc.strerror or exc}") from None
    follower = _Child(proc, announce, out, printing=not dashboard)
    try:
        with procs.on_stop_signals(follower.on_signal):
            if dashboard:
                follower.dashboard(script)
            code = procs.wait_after_stop(proc, follower.signalled)
    finally:
        proc.end()  # leaving abnormally (an error here): the script must not outlive us
        shutil.rmtree(folder, ignore_errors=True)
    follower.reader.join(5)
    if follower.printing is False:  # the dashboard held the output: its tail now
        for line in list(follower.lines)[-TAIL_LINES:]:
            print(line, file=out)
    if code < 0 and follower.signalled:  # killed by our second signal
        return 128 - code
    return code


class _Child:
    """The child's output (printed, or kept for after the dashboard) and its signals."""

    def __init__(self, proc: subprocess.Popen, announce: Path, out, printing: bool) -> None:
        self.proc = proc
        self.announce = announce
        self.out = out
        self.printing = printing
        self.lines: deque[str] = deque(maxlen=500)
        self.signalled: list[int] = []
        self.app = None
        self.reader = threading.Thread(target=self._pump, name="gantui-run-output",
                                       daemon=True)
        self.reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            text = line.rstrip("\n")
            self.lines.append(text)
            if self.printing:
                with contextlib.suppress(OSError, ValueError):
                    print(text, file=self.out, flush=True)

    def on_signal(self, signum: int, _frame) -> None:
        """SIGHUP: the terminal is gone; the dashboard closes and the script trains on, its
        output unseen. SIGTERM or SIGINT: the script stops at its next step boundary (after a
        checkpoint); a second one kills it now (its checkpoints on disk are written
        atomically)."""
        if signum == signal.SIGHUP:
            self.printing = None
            procs.detach_from_terminal()
        else:
            self.signalled.append(signum)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if len(self.signalled) == 1:
                    os.kill(self.proc.pid, signal.SIGTERM)  # not its group: its own workers
                else:
                    os.killpg(self.proc.pid, signal.SIGKILL)
        if self.app is not None:
            with contextlib.suppress(Exception):
                self.app.exit()

    def run_dir(self) -> Path | None:
        """The run directory the script announced, waiting while it lives."""
        while True:
            with contextlib.suppress(OSError):
                text = self.announce.read_text().strip()
                if text:
                    return Path(text)
            if self.proc.poll() is not None or self.signalled or self.printing is None:
                return None
            time.sleep(0.1)

    def dashboard(self, script: Path) -> None:
        """The dashboard on the script's run once it exists; leaving it with "keep training"
        prints the script's output here until it ends, as ``gantui train`` does."""
        run_dir = self.run_dir()
        if self.printing is None:  # the terminal went while the script started
            return
        if run_dir is None:
            if not self.signalled and self.proc.poll() is not None and self.proc.returncode == 0:
                print(f"gantui: {script.name} opened no run (gantui.api.init)", file=self.out)
            self.printing = False
            return
        from gantui.remote import RemoteController
        from gantui.run.follow import RunFollower
        from gantui.run.lock import is_locked
        from gantui.terminal import STALL_S, TerminalOutput, TerminalWatch
        from gantui.ui import GantuiApp
        from gantui.ui.tty import draw_through

        controller = RemoteController(run_dir, source="ui")
        app = GantuiApp(RunFollower(run_dir).drain, controller, attached=False,
                        title=f"gantui run · {script.name} · {run_dir.name}",
                        can_steer=lambda: is_locked(run_dir))
        self.app = app

        def close_on_failure() -> None:  # a script that crashes gives the terminal back
            if self.proc.wait() != 0:
                with contextlib.suppress(Exception):
                    app.call_from_thread(app.poll)  # its crash told (the terminal's notice)
                with contextlib.suppress(Exception):
                    app.call_from_thread(app.exit)

        threading.Thread(target=close_on_failure, name="gantui-run-wait", daemon=True).start()
        # a terminal that stops reading or vanishes without a SIGHUP is taken as one: the
        # dashboard closes and the script trains on (as gantui train's dashboard does)
        output = TerminalOutput(sys.__stderr__, STALL_S)
        draw_through(app, output)
        watch = TerminalWatch(output, lambda _reason: app.exit()).start()
        try:
            outcome = app.run()
        finally:
            watch.close()
            output.close()
            self.app = None
            controller.close()
        if watch.lost is not None:
            self.printing = None
            procs.detach_from_terminal()
        if self.printing is None:
            return
        if outcome is not None and outcome.detached and self.proc.poll() is None:
            for line in list(self.lines)[-TAIL_LINES:]:
                print(line, file=self.out)
            print(f"gantui: the dashboard closed; {script.name} goes on here (gantui watch "
                  f"{run_dir} to look again)", file=self.out, flush=True)
            self.lines.clear()
            self.printing = True
        else:
            self.printing = False


# ---- the child's side ----------------------------------------------------------------------

def _script_main(argv: list[str]) -> None:
    """``python -m gantui.runner SCRIPT ARGS``: follow the launcher's lifeline (SIGTERM to
    this process when the launcher is gone, however it went), then run SCRIPT as
    ``python SCRIPT ARGS`` would: as ``__main__``, with its folder first on ``sys.path``."""
    import runpy

    if not argv:
        print("usage: python -m gantui.runner SCRIPT [ARGS...]", file=sys.stderr)
        raise SystemExit(2)
    folder = Path(os.environ.get(ANNOUNCE_ENV, "")).parent
    procs.follow_parent(lambda: _orphaned(folder))
    script = argv[0]
    sys.argv = list(argv)
    sys.path[0] = str(Path(script).resolve().parent)
    try:
        runpy.run_path(script, run_name="__main__")
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, GantuiError) and sys.excepthook is sys.__excepthook__:
            # gantui.api refused to open the run (its directory taken, say): one line
            print(f"gantui: {Path(script).name}: {exc}", file=sys.stderr, flush=True)
        else:  # what python SCRIPT prints, without this module's and runpy's frames
            tb, own = exc.__traceback__, {script, os.path.abspath(script)}
            while tb is not None and tb.tb_frame.f_code.co_filename not in own:
                tb = tb.tb_next
            if tb is not None:
                exc.__traceback__ = tb  # the hook prints the exception's own traceback
            sys.excepthook(type(exc), exc, exc.__traceback__)
        raise SystemExit(130 if isinstance(exc, KeyboardInterrupt) else 1) from None


def _orphaned(folder: Path) -> None:
    """The launcher is gone: the script's output has no reader now, so a print must neither
    fail nor block; SIGTERM then stops it at its next step boundary (see gantui.api). The
    launcher's temporary ``folder`` is removed here, as the launcher would have (a SIGKILL
    gave it no chance)."""
    if folder.name.startswith(FOLDER_PREFIX):  # never a folder the environment merely names
        shutil.rmtree(folder, ignore_errors=True)
    procs.detach_from_terminal()
    os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    _script_main(sys.argv[1:])
