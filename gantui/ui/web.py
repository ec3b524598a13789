"""``gantui watch RUN... --web``: textual-serve behind a secret token, for the owner only.

Binding to 127.0.0.1 keeps other machines out, not the other accounts on a shared box. So
every request but the generic static files (the page, its websocket, downloads) must carry a
random token: ``?token=`` in the URL printed to the owner's terminal (and kept in a file in
the run or sweep directory that only the owner can read), after which the page sets an HttpOnly,
SameSite=Strict cookie and redirects to the same URL without the token. A websocket whose
``Origin`` is another site (or another port) is refused even with the cookie.

Imports aiohttp and textual-serve (the ``[web]`` extra), nothing of the engine.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from textual_serve.server import Server, to_int

log = logging.getLogger("gantui.web")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class TokenServer(Server):
    """textual-serve's :class:`Server`, refusing (403) any request without the token.

    Args:
        command: The shell command each browser tab runs (``gantui watch RUN``).
        port: The loopback port to listen on.
        title: The page's title.
        token: The secret; a fresh ``secrets.token_urlsafe(32)`` when not given.
    """

    def __init__(self, command: str, *, port: int, title: str, token: str | None = None):
        super().__init__(command, host="127.0.0.1", port=port, title=title)
        self.token = token or secrets.token_urlsafe(32)
        # Named after the token, so two servers on one host never overwrite each other's.
        self.cookie = "gantui-" + hashlib.sha256(self.token.encode()).hexdigest()[:12]

    @property
    def url(self) -> str:
        """The URL to open, with the token (a tunnel keeps ``localhost:PORT`` as it is)."""
        return f"http://localhost:{self.port}/?token={self.token}"

    def initialize_logging(self) -> None:
        """textual-serve's logging, without aiohttp's access lines (they hold the query,
        token and all); refused requests are logged here instead, without it."""
        super().initialize_logging()
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

    async def on_startup(self, app: web.Application) -> None:
        """Quiet: ``gantui watch --web`` has already said where to go."""

    async def _make_app(self) -> web.Application:
        app = await super()._make_app()
        app.middlewares.append(self._guard)
        return app

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        resource = request.match_info.route.resource  # routed already: judge what serves it
        if resource is not None and resource.name == "static":  # textual.js, css, a font
            return await handler(request)
        given = request.query.get("token") or request.cookies.get(self.cookie, "")
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            self._refuse(request, "no valid token")
        origin = request.headers.get("Origin")
        if origin is not None and origin != f"{request.scheme}://{request.host}":
            self._refuse(request, f"cross-origin request from {origin[:80]!r}")
        if request.path == "/" and "token" in request.query:
            # The token moves into a cookie and out of the address bar and the history.
            query = request.query.copy()
            del query["token"]
            response = web.Response(status=303, headers={
                "Location": str(request.rel_url.with_query(query))})
            response.set_cookie(self.cookie, self.token, path="/", httponly=True,
                                samesite="Strict")
        else:
            response = await handler(request)
        if not response.prepared:  # a websocket or a download has sent its headers
            response.headers["Referrer-Policy"] = "no-referrer"
            response.headers["Cache-Control"] = "no-store"
        return response

    def _refuse(self, request: web.Request, why: str) -> None:
        log.warning("refused %s %s from %s: %s", request.method, request.path,
                    request.remote, why)
        raise web.HTTPForbidden(text="403: open the URL with ?token= that `gantui watch "
                                "--web` printed in its terminal (the page then keeps the "
                                "token in a cookie).\n")

    @aiohttp_jinja2.template("app_index.html")
    async def handle_index(self, request: web.Request) -> dict[str, Any]:
        """The page, pointing its websocket at the host the browser asked for, so the cookie
        and the ``Origin`` check hold through a tunnel on any local port."""
        socket_scheme = "wss" if request.scheme == "https" else "ws"
        return {
            "font_size": to_int(request.query.get("fontsize", "16"), 16),
            "app_websocket_url": f"{socket_scheme}://{request.host}/ws",
            "config": {"static": {"url": "/static/"}},
            "application": {"name": self.title},
        }


def write_private(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` readable and writable by its owner only (mode 0600).

    Returns:
        Whether it was written (False where the folder is not writable).
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


def serve_dashboard(command: str, folder: Path, *, port: int, title: str,
                    echo: Callable[[str], None] = print, what: str | None = None) -> None:
    """Serve ``command`` to a browser on 127.0.0.1:``port`` until Ctrl-C or SIGTERM.

    The URL with the token goes to ``echo`` (the owner's terminal) and to
    ``folder/web-PORT.url`` (the run, the sweep, or the first of several runs; mode 0600,
    removed at the end), never to a shared log.

    Args:
        command: The shell command each browser tab runs.
        folder: Where the URL file goes.
        port: The loopback port.
        title: The page's title.
        echo: Where the URL is said.
        what: What is served, as the line says it; the folder's name when None.

    Raises:
        OSError: The port cannot be bound.
    """
    with socket.socket() as probe:  # a port in use fails here, before any file is written
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as aiohttp binds
        probe.bind(("127.0.0.1", port))
    server = TokenServer(command, port=port, title=title)
    url_file = folder / f"web-{port}.url"
    kept = write_private(url_file, server.url + "\n")
    echo(f"serving {what or folder.name} to you only: {server.url}"
         + (f" (also in {url_file}, readable by you only)" if kept else "")
         + f". From your own machine: ssh -L {port}:localhost:{port} THIS_HOST, then open "
         "that URL. Ctrl-C ends it.")
    try:
        server.serve()
    finally:
        try:
            if kept and url_file.read_text() == server.url + "\n":
                url_file.unlink()
        except OSError:
            pass
