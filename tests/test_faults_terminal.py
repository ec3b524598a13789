"""A dashboard whose terminal stops reading or vanishes without a hang-up (issue 19).

A real ``gantui train`` runs in a real pseudo-terminal; the test plays the terminal emulator on
the master side: it reads for a while, then stops reading (a hung SSH connection) or closes the
master while the run does not have the pty as its controlling terminal (no SIGHUP comes).
Either way training must carry on headless, journaled, and a stop must end the process within
seconds, with its checkpoint written and the run's lock released.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gantui.run.lock import is_locked
from gantui.run.store import RunStore

from .conftest import TINY_RING, wait_until

pytestmark = pytest.mark.slow  # dashboards in pseudo-terminals that stall or vanish

STOP_WITHIN_S = 10.0
"""Every stop must end the process this soon, whatever its terminal does."""


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Terminal:
    """``gantui train`` on the slave side of a new pty; the test holds the master."""

    def __init__(self, tmp_path: Path, name: str, *, controlling: bool,
                 cols: int = 200, rows: int = 60) -> None:
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols),
               "LINES": str(rows), "GANTUI_GRAPHICS": "halfblock",
               "GANTUI_STALL_S": "3"}  # the bound itself (10 s) is not what is tested
        sets = [s for s in TINY_RING if not s.startswith(("steps=", "log_every="))]
        args = [sys.executable, "-m", "gantui", "train", "--preset", "ring-8", "--device", "cpu",
                "--runs-dir", str(tmp_path / "runs"), "--name", name,
                "--set", "steps=1000000", "--set", "log_every=20"]
        for item in sets:
            args += ["--set", item]
        # sshd makes the pty the session's controlling terminal; a wrapper that opened the pty
        # and was killed leaves a process whose terminal it is not (no SIGHUP when it goes).
        preexec = (lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0)) if controlling else None
        self.proc = subprocess.Popen(args, cwd=tmp_path, stdin=slave, stdout=slave,
                                     stderr=slave, env=env, start_new_session=True,
                                     preexec_fn=preexec)
        os.close(slave)
        self.run = tmp_path / "runs" / name
        self.output = bytearray()

    def read(self, seconds: float) -> None:
        """Drain what the program writes for ``seconds``, as a terminal emulator does."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if select.select([self.master], [], [], min(left, 0.1))[0]:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:  # the program is gone
                    return

    def read_until(self, condition: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            self.read(0.2)

    def dashboard_up(self) -> bool:
        """The dashboard has drawn and the run trains (its metrics file and socket exist)."""
        return (b"\x1b[?1049h" in self.output and len(self.output) > 20_000
                and (self.run / "metrics.jsonl").exists() and (self.run / "control.sock").exists())

    def vanish(self) -> None:
        """The terminal goes away: the master side is closed."""
        if self.master >= 0:
            os.close(self.master)
            self.master = -1

    def steps(self) -> int:
        metrics = RunStore.open(self.run).metrics()
        return metrics[-1]["step"] if metrics else 0

    def journal(self) -> list[dict]:
        return RunStore.open(self.run).events()

    def alerts(self, kind: str) -> list[str]:
        return [r["message"] for r in self.journal()
                if r["event"] == "alert" and r["kind"] == kind]

    def stop_and_time(self, how: Callable[[], object]) -> float:
        """Ask for a stop with ``how``; the seconds until the process has exited."""
        started = time.monotonic()
        how()
        try:
            self.proc.wait(timeout=STOP_WITHIN_S * 3)
        except subprocess.TimeoutExpired:
            pass
        return time.monotonic() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.vanish()


def ctl(run: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gantui", "ctl", str(run), *args],
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def assert_stopped_cleanly(term: Terminal, took: float) -> None:
    """Exited in time, with code 0, a stop checkpoint at the last step and the lock free."""
    assert term.proc.poll() is not None, f"still running {took:.1f} s after the stop"
    assert took < STOP_WITHIN_S, f"took {took:.1f} s to exit after the stop"
    assert term.proc.returncode == 0
    journal = term.journal()
    assert journal[-1]["event"] == "state" and journal[-1]["state"] == "stopped", journal[-1]
    store = RunStore.open(term.run)
    last = store.checkpoint_paths()[-1]
    assert last.name == f"ckpt-{journal[-1]['step']:08d}.pt"
    assert not is_locked(term.run)
    assert not any(term.run.glob("checkpoints/.*tmp*"))
    metrics = store.metrics()
    assert metrics and metrics[-1]["step"] <= journal[-1]["step"]


def test_a_stalled_terminal_closes_the_dashboard_and_sigterm_still_ends_the_run(
        tmp_path: Path) -> None:
    """A hung SSH connection: the pty is never read again. The dashboard notices and training
    goes on headless; SIGTERM checkpoints and exits within seconds."""
    term = Terminal(tmp_path, "stall", controlling=True)
    try:
        term.read_until(term.dashboard_up, 60, "the dashboard")
        term.read(1.0)
        # Stop reading. The pty's buffer fills, the dashboard's writes block.
        wait_until(lambda: term.alerts("disconnect"), 30, "the stall to be journaled")
        assert "stopped reading" in term.alerts("disconnect")[-1]
        step = term.steps()
        wait_until(lambda: term.steps() > step, 20, "training to go on headless")
        took = term.stop_and_time(lambda: term.proc.send_signal(signal.SIGTERM))
        print(f"stalled terminal: SIGTERM to exit {took:.1f} s")
        assert_stopped_cleanly(term, took)
    finally:
        term.close()


def test_a_stop_during_a_stall_not_yet_noticed_ends_the_run(tmp_path: Path) -> None:
    """``ctl stop`` a moment after the terminal stopped reading, before the stall is noticed:
    the process still ends within seconds."""
    term = Terminal(tmp_path, "early", controlling=True)
    try:
        term.read_until(term.dashboard_up, 60, "the dashboard")
        time.sleep(1.0)  # not reading: the writes block
        took = term.stop_and_time(lambda: ctl(term.run, "stop"))
        print(f"stop during an unnoticed stall: ctl stop to exit {took:.1f} s")
        assert_stopped_cleanly(term, took)
    finally:
        term.close()


def test_a_vanished_terminal_goes_headless_without_spinning(tmp_path: Path) -> None:
    """The pty's master closes and no SIGHUP comes (not the controlling terminal): the
    dashboard closes at once, training goes on headless, SIGTERM ends it within seconds."""
    term = Terminal(tmp_path, "gone", controlling=False)
    try:
        term.read_until(term.dashboard_up, 60, "the dashboard")
        term.vanish()
        wait_until(lambda: term.alerts("disconnect"), 10, "the lost terminal to be journaled")
        assert "went away" in term.alerts("disconnect")[-1]
        step = term.steps()
        wait_until(lambda: term.steps() > step, 20, "training to go on headless")
        took = term.stop_and_time(lambda: term.proc.send_signal(signal.SIGTERM))
        print(f"vanished terminal: SIGTERM to exit {took:.1f} s")
        assert_stopped_cleanly(term, took)
    finally:
        term.close()


def test_a_terminal_that_vanishes_while_paused_leaves_an_idle_process(tmp_path: Path) -> None:
    """Paused, then the terminal goes: nothing spins (the process idles), and a stop from
    ``gantui ctl`` ends it within seconds."""
    term = Terminal(tmp_path, "paused", controlling=False)
    try:
        term.read_until(term.dashboard_up, 60, "the dashboard")
        assert ctl(term.run, "pause").returncode == 0
        term.read_until(lambda: any(r["event"] == "state" and r["state"] == "paused"
                                    for r in term.journal()), 20, "the pause")
        term.vanish()
        wait_until(lambda: term.alerts("disconnect"), 10, "the lost terminal to be journaled")
        time.sleep(0.5)  # let the dashboard finish closing
        before = cpu_seconds(term.proc.pid)
        time.sleep(2.0)
        used = cpu_seconds(term.proc.pid) - before
        print(f"vanished terminal while paused: {used / 2.0:.0%} of a core")
        assert used < 0.5, f"{used:.2f} s of CPU in 2 s while paused and headless"
        took = term.stop_and_time(lambda: ctl(term.run, "stop"))
        print(f"vanished terminal while paused: ctl stop to exit {took:.1f} s")
        assert_stopped_cleanly(term, took)
    finally:
        term.close()
