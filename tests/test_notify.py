"""Notifications: the ``notify`` command for real tiny runs that finish and crash, its failure
journaled once while training completes, the rate limit, and the terminal escape the dashboard
writes, read back from a real pseudo-terminal."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pty
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gantui import events as ev
from gantui.notify import CommandNotifier, Notice, Notices, terminal_escape
from gantui.run.store import RunStore

from .conftest import TINY_RING, cli, copy_run

RING = [item for s in [*TINY_RING, "steps=20"] for item in ("--set", s)]
RECORD = """printf '%s|%s|%s|%s|%s\\n' "$GANTUI_RUN" "$GANTUI_EVENT" "$GANTUI_KIND" \
"$GANTUI_STEP" "$GANTUI_MESSAGE" >> {out}"""
CRASHING_G = '''
from torch import nn


class G(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.nz, 16), nn.ReLU(), nn.Linear(16, 2))
        self.calls = 0

    def forward(self, z, y=None):
        self.calls += 1
        if self.training and self.calls > 15:
            raise RuntimeError("simulated device failure")
        return self.net(z)


def generator(cfg):
    return G(cfg)


class D(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2 * cfg.pack, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))

    def forward(self, x, y=None):
        return self.net(x.reshape(len(x), -1)).flatten()


def discriminator(cfg):
    return D(cfg)
'''


def _lines(path: Path) -> list[list[str]]:
    return [line.split("|") for line in path.read_text().splitlines()] if path.exists() else []


def test_a_finished_and_a_crashed_run_run_the_command_with_the_event(tmp_path: Path) -> None:
    out = tmp_path / "told.txt"
    command = RECORD.format(out=out)
    done = cli("train", "--no-ui", "-p", "ring-8", *RING, "--device", "cpu", "--name", "ok",
               "--notify", command, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert _lines(out) == [["ok", "finished", "finished", "20",
                            "finished 20 steps; checkpoint runs/ok/checkpoints/"
                            "ckpt-00000020.pt"]]
    assert f"notify = {json.dumps(command)}" in (tmp_path / "runs/ok/config.toml").read_text()

    (tmp_path / "crashing.py").write_text(CRASHING_G)
    out.unlink()
    crashed = cli("train", "--no-ui", "-p", "ring-8", *RING, "--set", "model=crashing.py",
                  "--device", "cpu", "--name", "bad", "--notify", command, cwd=tmp_path)
    assert crashed.returncode == 1
    [(run, event, kind, step, message)] = _lines(out)  # the error alert is no second notice
    assert (run, event, kind) == ("bad", "crashed", "crashed") and int(step) > 0
    assert message == "RuntimeError: simulated device failure"


def test_a_failing_command_is_journaled_once_and_training_completes(tmp_path: Path) -> None:
    done = cli("train", "--no-ui", "-p", "ring-8", *RING, "--device", "cpu", "--name", "f",
               "--notify", "echo no mail server >&2; exit 7", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    store = RunStore.open(tmp_path / "runs" / "f")
    journal = store.events()
    assert [r["state"] for r in journal if r["event"] == "state"][-1] == "finished"
    [failure] = [r for r in journal if r["event"] == "alert" and r["kind"] == "notify"]
    assert failure["message"].startswith("notify command failed (finished at step 20): exit "
                                         "status 7: no mail server")
    assert "WARNING notify command failed" in done.stdout
    assert [p.name for p in store.checkpoint_paths()][-1] == "ckpt-00000020.pt"

    reports: list[str] = []  # once: every later failure is counted, not reported
    notifier = CommandNotifier("exit 3", tmp_path, reports.append, rate_s=0)
    for kind in ("collapse", "d_wins", "quality"):
        notifier(ev.Alert(5, kind, "bad"))
    notifier.close()
    assert notifier.failures == 3 and len(reports) == 1 and "exit status 3" in reports[0]


def test_the_rate_limit_holds_back_a_flapping_warning(tmp_path: Path) -> None:
    now = [0.0]
    notices = Notices("r", rate_s=300, clock=lambda: now[0])
    told = [notices.see(ev.Alert(i, "d_wins", "D wins")) for i in range(10)]
    assert [n.step for n in told if n is not None] == [0]
    assert notices.see(ev.Alert(10, "collapse", "diversity fell")) is not None  # per kind
    assert notices.see(ev.StateChanged(11, "finished", "done")) is not None
    now[0] = 301.0
    again = notices.see(ev.Alert(12, "d_wins", "D wins"))
    assert again is not None and again.message == "D wins (9 more held back since the last one)"

    # a script's non-finite value is a warning it logs on from: a later crash is told
    script = Notices("s")
    assert script.see(ev.Alert(3, "nonfinite", "loss is not finite (nan) at step 3")).event \
        == "nonfinite"
    assert script.see(ev.Scalars(4, {"loss": 0.5})) is None
    crash = script.see(ev.StateChanged(9, "error", "ZeroDivisionError: boom"))
    assert crash is not None and crash.event == "crashed"
    # the trainer's order: the interval's metrics, the alert, then the stop it causes
    trainer = Notices("t")
    assert trainer.see(ev.Metrics(20, 0, *[float("nan")] * 2, *[0.5] * 10)) is None
    assert trainer.see(ev.Alert(20, "nonfinite", "loss is NaN")) is not None
    assert trainer.see(ev.StateChanged(20, "error", "training diverged")) is None

    out = tmp_path / "told.txt"  # through a real command: 20 flaps, one run of it
    notifier = CommandNotifier(RECORD.format(out=out), tmp_path / "r", lambda _: None)
    for i in range(20):
        notifier(ev.Alert(i, "grad_explode", "gradients explode"))
    notifier(ev.Alert(20, "nonfinite", "loss is NaN"))
    notifier(ev.StateChanged(20, "error", "training diverged (non-finite loss)"))  # told
    notifier.close()
    assert [line[1:4] for line in _lines(out)] == [["warning", "grad_explode", "0"],
                                                  ["nonfinite", "nonfinite", "20"]]


def test_the_escape_suits_the_terminal() -> None:
    notice = Notice("warning", "collapse", "r", 40, "diversity fell\x1b]0;owned\x07")
    osc9 = terminal_escape(notice, {"TERM": "xterm-256color"})
    assert osc9 == "\x1b]9;gantui: r collapse at step 40: diversity fell\\x1b]0;owned\\x07\x07\x07"
    assert terminal_escape(notice, {"TERM": "xterm-kitty"}).endswith("owned\\x07\x07")  # no bell
    assert terminal_escape(notice, {"TERM": "foot"}).startswith(
        "\x1b]777;notify;gantui: r warning;r collapse")
    wrapped = terminal_escape(notice, {"TERM": "screen", "TMUX": "/tmp/tmux-1/default,1,0"})
    assert wrapped == ("\x1bPtmux;" + osc9[:-1].replace("\x1b", "\x1b\x1b") + "\x1b\\\x07")
    assert terminal_escape(notice, {"GANTUI_NOTIFY_TERMINAL": "off"}) == ""
    assert terminal_escape(notice, {"GANTUI_NOTIFY_TERMINAL": "bell"}) == "\x07"


def _read_until(fd: int, wanted: bytes, got: bytearray, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while wanted not in got and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.1)[0]:
            try:
                got += os.read(fd, 65536)
            except OSError as exc:  # EIO: the child closed the terminal
                if exc.errno == errno.EIO:
                    break
                raise
    return wanted in got


@pytest.mark.slow  # gantui watch in a pseudo-terminal
def test_watch_writes_the_escape_to_its_terminal_and_runs_the_command(
        finished_ring: Path, tmp_path: Path) -> None:
    """A real ``gantui watch`` in a real pty, as in tmux: what the run did before it attached
    is told to no one; a warning journaled afterwards comes out of the terminal as a desktop
    notification wrapped for tmux plus a bell, and runs the command."""
    run = copy_run(finished_ring, tmp_path)
    out = tmp_path / "told.txt"
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "TMUX": "/tmp/tmux-0/default,1,0",
           "GANTUI_GRAPHICS": "halfblock", "COLUMNS": "100", "LINES": "30"}
    proc = subprocess.Popen([sys.executable, "-m", "gantui", "watch", str(run), "--notify",
                             RECORD.format(out=out)], stdin=slave, stdout=slave, stderr=slave,
                            env=env, start_new_session=True)
    os.close(slave)
    got = bytearray()
    try:
        assert _read_until(master, b"finished", got), got[-2000:]  # drawn: history is in
        with open(run / "events.jsonl", "a") as journal:
            journal.write(json.dumps(ev.to_record(ev.Alert(60, "collapse", "diversity fell")))
                          + "\n")
        wanted = (b"\x1bPtmux;\x1b\x1b]9;gantui: r collapse at step 60: diversity fell\x07"
                  b"\x1b\\\x07")
        assert _read_until(master, wanted, got), got[-2000:]
        deadline = time.monotonic() + 10  # the shell makes the file before printf fills it
        while not _lines(out) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _lines(out) == [["r", "warning", "collapse", "60", "diversity fell"]]
        assert b"]9;" not in got.replace(wanted, b"")  # the finished run's history: no notice
        os.write(master, b"q")  # watching a finished run: q quits
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        os.close(master)
