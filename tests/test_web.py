"""`gantui watch RUN --web`: the dashboard served to a browser by textual-serve, on localhost."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gantui.headless import follow
from gantui.session import start

from .conftest import tiny
from .test_cli import gantui

pytest.importorskip("textual_serve")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_dashboard_in_a_browser(runs_dir: Path) -> None:
    import aiohttp  # textual-serve's own HTTP stack: a real client for its websocket

    session = start(tiny("ring-8", "eval_every=0"), "ring-8", runs_dir=runs_dir, device="cpu")
    follow(session, 60)
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "gantui", "watch", str(session.run_dir),
                               "--web", "--port", str(port)], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        page = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
                    page = reply.read().decode()
                    break
            except OSError:
                time.sleep(0.2)
        assert "textual.js" in page and "gantui watch" in page

        async def session_text() -> str:
            seen = ""
            async with aiohttp.ClientSession() as client, client.ws_connect(
                    f"http://127.0.0.1:{port}/ws?width=100&height=30") as ws:
                while "FINISHED" not in seen:
                    msg = await asyncio.wait_for(ws.receive(), 60)
                    if msg.type == aiohttp.WSMsgType.BINARY:
                        seen += msg.data.decode("utf-8", "replace")
                    elif msg.type == aiohttp.WSMsgType.TEXT:
                        seen += msg.data
                    else:
                        break
            return seen

        text = asyncio.run(session_text())
        assert "FINISHED" in text and "step 60/60" in text  # the real dashboard, drawn
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert "ssh -L" in out and f"127.0.0.1:{port}" in out


def test_web_errors_are_one_line(tmp_path: Path) -> None:
    out = gantui("watch", "--web", cwd=tmp_path)
    assert out.returncode == 1 and "--web serves one run" in out.stderr
    out = gantui("watch", str(tmp_path / "nope"), "--web", cwd=tmp_path)
    assert out.returncode == 1 and "Traceback" not in out.stderr
