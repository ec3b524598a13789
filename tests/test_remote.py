"""Steering a live run from another process: the control socket and ``gantui ctl``."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from pathlib import Path

import pytest

from gantui.remote import PRIVATE, ControlServer, RemoteError, addressable, request, socket_path
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start

from .conftest import cli, tiny
from .test_cli import TINY, spawn, wait_for


def raw(run_dir: Path, payload: bytes) -> dict:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(30)  # a server that never answers fails the test, not hangs it
        with addressable(socket_path(run_dir)) as address:  # deep temp folders: see remote.py
            sock.connect(address)
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return json.loads(data)


@pytest.mark.slow  # a headless run in a child process, steered over its socket
def test_headless_run_steered_by_ctl(tmp_path: Path) -> None:
    proc = spawn("train", "--no-ui", "--preset", "ring-8", *TINY, "--set", "steps=10000000",
                 "--set", "log_every=10", "--set", "checkpoint_every=100000", "--name", "r",
                 "--device", "cpu", cwd=tmp_path)
    run = tmp_path / "runs" / "r"
    try:
        wait_for(lambda: socket_path(run).exists() and (run / "metrics.jsonl").exists())
        out = cli("ctl", str(run), "pause", cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.startswith("paused at step "), out.stderr
        held = int(out.stdout.split()[-1])
        time.sleep(1.0)
        status = cli("ctl", str(run), "status", cwd=tmp_path)
        assert f"paused at step {held}/" in status.stdout

        out = cli("ctl", str(run), "set", "lr_g=2e-4", "label_smoothing=0.1", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert f"set lr_g 0.001 -> 0.0002 at step {held}" in out.stdout
        bad = cli("ctl", str(run), "set", "lr_g=abc", cwd=tmp_path)
        assert bad.returncode == 1 and bad.stderr.startswith("error: bad value 'abc' for lr_g")
        bad = cli("ctl", str(run), "set", "ngf=3", cwd=tmp_path)
        assert bad.returncode == 1 and "cannot be changed while training" in bad.stderr
        assert cli("ctl", str(run), "resume", cwd=tmp_path).returncode == 0

        store = RunStore.open(run)
        wait_for(lambda: any(r["step"] > held for r in store.metrics()))
        after = [r for r in store.metrics() if r["step"] > held]
        assert after[0]["lr_g"] == 2e-4
        assert {"event": "set", "key": "lr_g", "old": 1e-3, "new": 2e-4,
                "step": held} in store.events()

        out = cli("ctl", str(run), "stop", cwd=tmp_path)
        assert out.returncode == 0 and out.stdout.startswith("stopped at step"), out.stderr
        ckpt = Path(out.stdout.strip().split(": ", 1)[1])
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
    assert load_checkpoint_file(tmp_path / ckpt)["step"] > held
    assert not socket_path(run).exists()
    dead = cli("ctl", str(run), "pause", cwd=tmp_path)
    assert dead.returncode == 1 and dead.stderr.strip() == (
        f"error: no live run at {run} (no control socket; it has ended or never started)")


def test_ctl_against_a_dead_process_fails_cleanly(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(socket_path(run)))  # a socket file whose process died
    stale.close()
    out = cli("ctl", str(run), "checkpoint", cwd=tmp_path)
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: no live run at {run} (its process has exited)"
    assert "Traceback" not in out.stderr
    out = cli("ctl", str(run), "explode", cwd=tmp_path)
    assert out.returncode == 1 and "unknown action 'explode'" in out.stderr


@pytest.fixture
def live(runs_dir: Path):
    cfg = tiny("ring-8", "steps=10000000", "log_every=10", "checkpoint_every=100000")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    yield session
    session.controller.stop()
    session.join(30)


def test_socket_is_owner_only(live) -> None:
    mode = stat.S_IMODE(os.stat(socket_path(live.run_dir)).st_mode)
    assert mode == 0o600
    assert not list(live.run_dir.glob(f"{PRIVATE}*"))  # renamed into place, not left beside


def test_the_socket_appears_listening_and_clears_a_dead_process_leftovers(tmp_path: Path
                                                                          ) -> None:
    leftover = tmp_path / f"{PRIVATE}99999"  # killed between bind and rename
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(str(leftover))
    (tmp_path / ".csv").write_text("not ours")  # a user's file that only looks alike
    server = ControlServer(tmp_path, None, lambda: {"state": "running"}, lambda _why: None)
    server.start()
    try:
        assert not leftover.exists() and (tmp_path / ".csv").exists()
        assert not list(tmp_path.glob(f"{PRIVATE}[0-9]*"))
        assert len(PRIVATE) + len(str(2 ** 22)) <= len(socket_path(tmp_path).name)
        assert request(tmp_path, {"action": "status"})["state"] == "running"
    finally:
        server.close()
    assert not socket_path(tmp_path).exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_steer(live) -> None:
    pid = os.fork()
    if pid == 0:  # child: become nobody and try to connect
        code = 3
        try:
            os.setuid(65534)
            request(live.run_dir, {"action": "stop"}, timeout=5)
            code = 0
        except RemoteError as exc:
            code = 1 if "permission denied" in str(exc) else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 1
    assert live.alive and live.state == "running"


@pytest.mark.parametrize(("payload", "error"), [
    (b"not json\n", "not a JSON object"),
    (b"[1, 2]\n", "not a JSON object"),
    (b'{"action": "rm -rf"}\n', "unknown action 'rm -rf'"),
    (b'{"action": "set", "changes": ["lr_g"]}\n', "non-empty 'changes' object"),
    (b'{"action": "set", "changes": {"lr_g": {"$gt": 1}}}\n', "strings or numbers"),
    (b'{"action": "set", "changes": {"__class__": "x"}}\n', "unknown key '__class__'"),
    (b"\xff\xfe\n", "not a JSON object"),
    (b"x" * 70_000, "larger than"),
])
def test_malformed_commands_are_refused_and_journaled(live, payload: bytes, error: str) -> None:
    reply = raw(live.run_dir, payload)
    assert reply["ok"] is False and error in reply["error"]
    step = live.trainer.step
    wait_for(lambda: live.trainer.step > step, timeout=30)  # training carries on

    def journaled() -> list[str]:
        return [r["message"] for r in RunStore.open(live.run_dir).events()
                if r["event"] == "alert" and r["kind"] == "control"]

    wait_for(lambda: journaled(), timeout=30)
    assert len(journaled()) == 1 and error in journaled()[0]


def test_a_silent_client_does_not_stall_training(live) -> None:
    with socket.socket(socket.AF_UNIX) as idle:
        with addressable(socket_path(live.run_dir)) as address:
            idle.connect(address)  # connects and says nothing
        step = live.trainer.step
        wait_for(lambda: live.trainer.step > step + 50, timeout=30)
        assert request(live.run_dir, {"action": "status"})["state"] == "running"


def test_a_live_run_cannot_be_trained_twice(live) -> None:
    from gantui.errors import GantuiError
    from gantui.run.lock import is_locked

    assert is_locked(live.run_dir)
    with pytest.raises(GantuiError, match="being trained by a live process"):
        start(None, "", resume=live.run_dir, sets=["steps=20000000"], device="cpu")
    assert live.alive
    live.controller.stop().result(timeout=30)
    live.join(30)
    assert not is_locked(live.run_dir)


@pytest.mark.slow  # a run in a child process, stopped with SIGSTOP
def test_a_stopped_process_still_owns_its_run(tmp_path: Path) -> None:
    """Ctrl-Z / SIGSTOP: the process cannot answer, but it is alive and keeps the run."""
    import signal

    proc = spawn("train", "--no-ui", "--preset", "ring-8", *TINY, "--set", "steps=10000000",
                 "--name", "z", "--device", "cpu", cwd=tmp_path)
    run = tmp_path / "runs" / "z"
    try:
        wait_for(lambda: socket_path(run).exists() and (run / "metrics.jsonl").exists())
        proc.send_signal(signal.SIGSTOP)
        listing = cli("runs", cwd=tmp_path)
        assert "crashed" not in listing.stdout and "running" in listing.stdout
        again = cli("train", "--no-ui", "--resume", str(run), cwd=tmp_path)
        assert again.returncode == 1 and "being trained by a live process" in again.stderr
    finally:
        proc.send_signal(signal.SIGCONT)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0


def test_long_run_paths_still_get_a_socket(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    cfg = tiny("ring-8", "steps=10000000")
    session = start(cfg, "ring-8", runs_dir=deep, name="x" * 20, device="cpu")
    try:
        assert len(str(socket_path(session.run_dir))) > 108
        assert request(session.run_dir, {"action": "status"})["state"] in ("starting",
                                                                             "running")
    finally:
        session.controller.stop()
        session.join(30)


def test_python_api_and_cli_share_validation(tmp_path: Path) -> None:
    out = cli("ctl", str(tmp_path), "set", cwd=tmp_path)
    assert out.returncode == 1 and "set needs KEY=VALUE pairs" in out.stderr


def test_forked_children_do_not_keep_the_run_locked(tmp_path: Path) -> None:
    """DataLoader workers are forked: their copy of the lock must not outlive the owner's."""
    import signal as sig

    from gantui.run.lock import RunLock, is_locked

    lock = RunLock(tmp_path)
    lock.acquire()
    child = os.fork()
    if child == 0:
        time.sleep(30)
        os._exit(0)
    try:
        assert is_locked(tmp_path)
        lock.release()
        assert not is_locked(tmp_path)
    finally:
        os.kill(child, sig.SIGKILL)
        os.waitpid(child, 0)
