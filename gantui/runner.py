"""``gantui run SCRIPT.py [ARGS...]``: a user's own training script (one that uses
:mod:`gantui.api`) in a child process, with the dashboard following its run directory as
``gantui watch`` does, or headless (its output printed) without a terminal.

The child runs in its own session, so a dropped terminal reaches it only through us: SIGINT,
SIGTERM and SIGHUP are forwarded as SIGTERM (the script checkpoints and stops at its next
step boundary; a second signal kills it), and a parent-death signal ends it if we die.
The script tells us its run directory through the file named in ``GANTUI_RUN_ANNOUNCE``.
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

ANNOUNCE_ENV = "GANTUI_RUN_ANNOUNCE"  # the same name as gantui.api.ANNOUNCE_ENV
TAIL_LINES = 40
"""The script's last output lines shown after the dashboard closes."""


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux ``PR_SET_PDEATHSIG``).
    The lead unifies this with the shared helper at merge."""
    with contextlib.suppress(Exception):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def run_script(script: Path, args: list[str], *, dashboard: bool, out=None) -> int:
    """Run ``script`` with ``args`` in a child Python and follow it; returns its exit code.

    Raises:
        GantuiError: no such script.
    """
    out = out if out is not None else sys.stdout
    if not script.is_file():
        raise GantuiError(f"no script at {script}")
    folder = Path(tempfile.mkdtemp(prefix="gantui-run-"))
    announce = folder / "run_dir"
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{ANNOUNCE_ENV: str(announce)})
    parent = os.getpid()
    try:
        proc = subprocess.Popen(
            [sys.executable, str(script), *args], env=env,
            stdin=subprocess.DEVNULL if dashboard else None, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace",
            start_new_session=True, preexec_fn=lambda: _die_with_parent(parent))
    except OSError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise GantuiError(f"cannot start {script}: {exc.strerror or exc}") from None
    follower = _Child(proc, announce, out, printing=not dashboard)
    previous = {sig: signal.signal(sig, follower.on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        if dashboard:
            follower.dashboard(script)
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:  # we are leaving abnormally: the child must not outlive us
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
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
        """First signal: the script stops at its next step boundary (after a checkpoint); a
        second: killed now (its checkpoints on disk are written atomically)."""
        self.signalled.append(signum)
        first = len(self.signalled) == 1
        with contextlib.suppress(ProcessLookupError):
            if first:
                os.kill(self.proc.pid, signal.SIGTERM)
            else:
                os.killpg(self.proc.pid, signal.SIGKILL)
        if signum == signal.SIGHUP:  # the terminal is gone: nothing more to show
            self.printing = None
            procs.detach_from_terminal()
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
            if self.proc.poll() is not None or self.signalled:
                return None
            time.sleep(0.1)

    def dashboard(self, script: Path) -> None:
        """The dashboard on the script's run once it exists; leaving it with "keep training"
        prints the script's output here until it ends, as ``gantui train`` does."""
        run_dir = self.run_dir()
        if run_dir is None:
            if not self.signalled and self.proc.poll() is not None and self.proc.returncode == 0:
                print(f"gantui: {script.name} opened no run (gantui.api.init)", file=self.out)
            self.printing = False
            return
        from gantui.remote import RemoteController
        from gantui.run.follow import RunFollower
        from gantui.run.lock import is_locked
        from gantui.ui import GantuiApp

        controller = RemoteController(run_dir, source="ui")
        app = GantuiApp(RunFollower(run_dir).drain, controller, attached=False,
                        title=f"gantui run · {script.name} · {run_dir.name}",
                        can_steer=lambda: is_locked(run_dir))
        self.app = app

        def close_on_failure() -> None:  # a script that crashes gives the terminal back
            if self.proc.wait() != 0:
                with contextlib.suppress(Exception):
                    app.call_from_thread(app.exit)

        threading.Thread(target=close_on_failure, name="gantui-run-wait", daemon=True).start()
        try:
            outcome = app.run()
        finally:
            self.app = None
            controller.close()
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
