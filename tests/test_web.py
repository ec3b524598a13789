"""`gantui watch RUN --web`: the dashboard (or the compare view of several runs) served to a
browser by textual-serve, on localhost, to its owner only: the page and its websocket want
the token printed to the owner."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import pwd
import re
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from gantui.headless import follow
from gantui.session import start

from .conftest import cli, tiny
from .test_cli import gantui

pytest.importorskip("textual_serve")

UPGRADE = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
           "Sec-WebSocket-Key": base64.b64encode(b"sixteen byte key").decode()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    """The status of one GET on 127.0.0.1:port, redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


@dataclass
class Served:
    """A running ``gantui watch RUN --web`` and what it printed."""

    port: int
    run_dir: Path
    proc: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)

    @property
    def url_file(self) -> Path:
        return self.run_dir / f"web-{self.port}.url"

    @property
    def url(self) -> str:
        return next(re.search(r"http://localhost:\d+/\?token=[\w-]+", line)[0]
                    for line in self.lines if "?token=" in line)

    @property
    def token(self) -> str:
        return self.url.split("token=", 1)[1]


@contextmanager
def _serving(run_dir: Path, *more: Path) -> Iterator[Served]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gantui", "watch", str(run_dir),
                             *map(str, more), "--web", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    served = Served(port, run_dir, proc)
    reader = threading.Thread(target=lambda: served.lines.extend(proc.stdout), daemon=True)
    reader.start()  # drained all along: the server never blocks on a full pipe
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "".join(served.lines)
            try:
                if (_status(port, "/static/css/xterm.css") == 200
                        and any("?token=" in line for line in served.lines)):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "".join(served.lines)
            time.sleep(0.2)
        yield served
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        reader.join(timeout=10)


@pytest.fixture(scope="module")
def run_dir() -> Iterator[Path]:
    """A finished tiny run in a folder other accounts may traverse (pytest's own tmp folders
    are 0700, which would hide the token file's mode behind the folder's)."""
    root = Path(tempfile.mkdtemp(prefix="gantui-web-"))
    try:
        session = start(tiny("ring-8", "eval_every=0"), "ring-8", runs_dir=root / "runs",
                        device="cpu")
        follow(session, 60)
        for folder in (root, root / "runs", session.run_dir):
            folder.chmod(0o755)
        yield session.run_dir
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def served(run_dir: Path) -> Iterator[Served]:
    with _serving(run_dir) as server:
        yield server


def _browser_text(served: Served, done: Callable[[str], bool]) -> str:
    """What a browser tab is sent, opened as a browser would (the token URL, its 303 and
    cookie, the page, its websocket), until ``done(text)``."""
    import aiohttp  # textual-serve's own HTTP stack: a real client for its websocket

    port = served.port

    async def session_text() -> str:
        seen = ""
        async with aiohttp.ClientSession() as client:
            async with client.get(served.url) as reply:  # as a browser: 303, cookie, page
                page = await reply.text()
                assert reply.status == 200 and [r.status for r in reply.history] == [303]
                assert "token" not in str(reply.url) and served.token not in page
            assert "textual.js" in page and "gantui " in page
            ws_url = re.search(r'data-session-websocket-url="([^"]+)"', page)[1]
            assert ws_url == f"ws://localhost:{port}/ws"  # the host the browser asked for
            async with client.ws_connect(f"{ws_url}?width=100&height=30",
                                         origin=f"http://localhost:{port}") as ws:
                while not done(seen):  # in by the cookie alone
                    msg = await asyncio.wait_for(ws.receive(), 60)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        seen += msg.data.decode("utf-8", "replace")
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        seen += msg.data
                    else:
                        break
        return seen

    return asyncio.run(session_text())


def test_the_dashboard_in_a_browser(served: Served) -> None:
    text = _browser_text(served, lambda seen: "FINISHED" in seen)
    assert "FINISHED" in text and "step 60/60" in text  # the real dashboard, drawn


def test_the_compare_view_in_a_browser(run_dir: Path) -> None:
    twin = run_dir.with_name(run_dir.name + "-twin")
    shutil.copytree(run_dir, twin, ignore=shutil.ignore_patterns("web-*.url"))
    try:
        with _serving(run_dir, twin) as served:
            assert _status(served.port, "/") == 403
            assert any("compare view of 2 runs" in line for line in served.lines)
            assert served.url_file.read_text().strip() == served.url  # in the first run
            text = _browser_text(served, lambda seen: "2 runs · 0 live" in seen)
            assert "2 runs · 0 live" in text and "-twin" in text  # the compare view, drawn
        assert not served.url_file.exists()
    finally:
        shutil.rmtree(twin)


def test_no_token_no_dashboard(served: Served) -> None:
    port, token = served.port, served.token
    assert _status(port, "/") == 403
    assert _status(port, "/?token=wrong") == 403
    assert _status(port, "/", {"Cookie": f"gantui-0={token}"}) == 403  # another server's name
    assert _status(port, "/ws", UPGRADE) == 403
    assert _status(port, "/ws?token=wrong", UPGRADE) == 403
    assert _status(port, "/download/anything") == 403
    assert _status(port, f"/?token={token}") == 303
    # A page on another site, or on another port of localhost, cannot drive the run from
    # the owner's browser, even with the token (or its cookie) at hand.
    for origin in ("http://evil.example", f"http://127.0.0.1:{port + 1}", "null"):
        assert _status(port, f"/ws?token={token}", {**UPGRADE, "Origin": origin}) == 403
    assert _status(port, f"/?token={token}", {"Origin": f"http://127.0.0.1:{port}"}) == 303
    assert _status(port, "/static/js/textual.js") == 200  # generic assets need no token
    out = "".join(served.lines)
    assert "refused GET /ws" in out and token not in out.replace(served.url, "")


def _as_user(uid: int, gid: int, probe: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``probe()`` run in a forked child that has become ``uid``/``gid`` (no exec: the venv's
    interpreter may sit where that user cannot read)."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only sockets and files from here on
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result = probe()
        except BaseException as exc:  # reported to the parent, never raised in the child
            result = {"error": repr(exc)}
        os.write(write_end, json.dumps(result).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    return json.loads(data or '{"error": "the child died"}')


def test_a_second_user_is_refused(served: Served) -> None:
    if os.geteuid() != 0:
        pytest.skip("acting as a second user needs root (setuid in a forked child)")
    try:
        other = pwd.getpwnam("nobody")
        uid, gid = other.pw_uid, other.pw_gid
    except KeyError:
        uid = gid = 65534
    port, url_file = served.port, served.url_file
    assert stat.S_IMODE(url_file.stat().st_mode) == 0o600
    assert url_file.read_text().strip() == served.url

    def probe() -> dict[str, Any]:
        seen: dict[str, Any] = {"uid": os.getuid(), "page": _status(port, "/"),
                                "ws": _status(port, "/ws", UPGRADE),
                                "size": os.stat(url_file).st_size}  # the folder lets it look
        try:
            seen["token file"] = url_file.read_text()
        except PermissionError:
            seen["token file"] = "denied"
        return seen

    seen = _as_user(uid, gid, probe)
    if "error" in seen:
        pytest.skip(f"cannot act as uid {uid} on this machine: {seen['error']}")
    assert seen == {"uid": uid, "page": 403, "ws": 403, "size": len(served.url) + 1,
                    "token file": "denied"}


def test_the_url_file_goes_with_the_server(run_dir: Path) -> None:
    with _serving(run_dir) as other:
        assert other.url_file.is_file()
        second = other.url_file
        busy = gantui("watch", str(run_dir), "--web", "--port", str(other.port),
                      cwd=run_dir)
        assert busy.returncode == 1 and "cannot serve on" in busy.stderr
        assert second.read_text().strip() == other.url  # not taken over by the failed one
    assert not second.exists()
    line = next(line for line in other.lines if "?token=" in line)
    assert "ssh -L" in line and str(second) in line


def test_web_errors_are_one_line(tmp_path: Path) -> None:
    out = gantui("watch", "--web", cwd=tmp_path)
    assert out.returncode == 1 and "--web needs a run" in out.stderr
    out = gantui("watch", str(tmp_path / "nope"), "--web", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    out = gantui("watch", str(tmp_path), str(tmp_path / "nope"), "--web", cwd=tmp_path)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1
    out = cli("watch", str(tmp_path), "--web", "--notify", "true", cwd=tmp_path)
    assert out.returncode == 1 and "--notify is not for --web" in out.stderr
