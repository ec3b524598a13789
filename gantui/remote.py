"""Steer a run from another process: a Unix socket in the run directory.

The training process serves ``<run_dir>/control.sock`` (mode 0600; peers with another uid
are refused by their kernel credentials). One connection carries one request and one reply,
each a JSON line::

    -> {"action": "set", "changes": {"lr_g": "1e-4"}}
    <- {"ok": true, "ack": {"action": "set", "step": 1234, "changes": [...]}}
    <- {"ok": false, "error": "unknown key 'lr'; ..."}

Requests are validated as strictly as the command line. Malformed ones are refused and
journaled through the trainer, and never block it: the server runs in its own thread and
waits on the trainer's acknowledgement with a timeout.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path
from typing import Any

from gantui.engine.control import ACTIONS, Controller
from gantui.errors import GantuiError
from gantui.files import parse_record
from gantui.text import safe, shown

CTL_ACTIONS = (*ACTIONS, "status")
"""What a client may ask: the controller's :data:`ACTIONS` plus ``status``, answered here."""

SOCKET_NAME = "control.sock"
MAX_REQUEST = 8 * 1024
"""Largest request accepted, checked before parsing (a real one is under 1 KiB)."""
READ_TIMEOUT = 5.0
ACK_TIMEOUT = 60.0
_UNIX_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin


class RemoteError(GantuiError):
    """No live run answered, or it refused the request."""


def socket_path(run_dir: Path) -> Path:
    """Where a run's control socket lives."""
    return run_dir / SOCKET_NAME


@contextlib.contextmanager
def addressable(path: Path) -> Iterator[str]:
    """A path ``bind``/``connect`` accept: long paths (``sun_path`` holds 108 bytes) go
    through ``/proc/self/fd``. For any client that talks to the socket itself."""
    text = str(path)
    if len(text.encode()) < _UNIX_PATH_MAX or not Path("/proc/self/fd").is_dir():
        yield text
        return
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        yield f"/proc/self/fd/{fd}/{path.name}"
    finally:
        os.close(fd)


# ---- server (inside the training process) ---------------------------------------------------

PRIVATE = ".cs"
"""The control socket's name while it is bound but not yet listening: this and the pid."""


class ControlServer:
    """Serves a run's control socket in a named daemon thread.

    Args:
        run_dir: the run directory; the socket is ``run_dir/control.sock``.
        controller: the trainer's command inbox.
        status: returns a JSON-ready snapshot (step, state, live values) for ``status``.
        refuse: journals a refused request (called from the server thread; must not block).
    """

    def __init__(self, run_dir: Path, controller: Controller, status: Callable[[], dict],
                 refuse: Callable[[str], None]) -> None:
        self.path = socket_path(run_dir)
        self.controller = controller
        self.status = status
        self.refuse = refuse
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="gantui-control", daemon=True)
        self._handlers: set[threading.Thread] = set()
        self._last_refusal = 0.0
        self._suppressed = 0

    def start(self) -> None:
        """Bind the socket (owner-only) and start serving.

        Raises:
            RemoteError: another live process already serves this run.
        """
        # we hold the run's lock: these are a dead process's sockets
        for old in (self.path, *self.path.parent.glob(f"{PRIVATE}[0-9]*")):
            if old.exists() or old.is_symlink():
                old.unlink()
        # Bound and listening under a private name first, then renamed into place: a client
        # that sees control.sock can connect (bind creates the file before listen accepts).
        # No longer than control.sock, so a path that fits sun_path still does.
        private = self.path.with_name(f"{PRIVATE}{os.getpid()}")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            with addressable(private) as address:
                sock.bind(address)
            os.chmod(private, 0o600)
            sock.listen(8)
            os.replace(private, self.path)
        except BaseException:
            sock.close()
            private.unlink(missing_ok=True)
            raise
        finally:
            os.umask(old_umask)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread.start()

    def close(self) -> None:
        """Stop serving, let answers in flight go out, and remove the socket file."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(2)
        for handler in list(self._handlers):
            handler.join(2)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            # One short-lived thread per connection: a slow client cannot block others.
            handler = threading.Thread(target=self._handle, args=(conn,),
                                       name="gantui-control-conn", daemon=True)
            self._handlers = {t for t in self._handlers if t.is_alive()} | {handler}
            handler.start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(READ_TIMEOUT)
            try:
                if not _same_user(conn):
                    self._refused("a process of another user tried to steer this run")
                    _send(conn, {"ok": False, "error": "permission denied: not the run's owner"})
                    return
                request = _read_request(conn)
                reply = self._dispatch(request)
            except _BadRequest as exc:
                self._refused(f"malformed control request refused: {exc}")
                reply = {"ok": False, "error": f"malformed request: {exc}"}
            except (OSError, TimeoutError):
                return
            except Exception as exc:  # noqa: BLE001 - no request may kill this thread
                self._refused(f"control request failed: {type(exc).__name__}")
                reply = {"ok": False, "error": f"request failed: {type(exc).__name__}"}
            with contextlib.suppress(OSError):
                _send(conn, reply)
                _discard_input(conn)

    def _dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        action = request.get("action")
        if action == "status":
            return {"ok": True, "ack": self.status()}
        if action not in ACTIONS:
            raise _BadRequest(f"unknown action {shown(action)}; expected status or "
                              f"{', '.join(ACTIONS)}")
        source = safe(request.get("source", "ctl"), 32)  # printed, drawn and journaled
        try:
            if action == "set":
                changes = request.get("changes")
                if not isinstance(changes, dict) or not changes:
                    raise _BadRequest("set needs a non-empty 'changes' object")
                if not all(isinstance(v, (str, int, float, bool)) for v in changes.values()):
                    raise _BadRequest("set values must be strings or numbers")
                future = self.controller.set({str(k): v for k, v in changes.items()},
                                             source=source)
            else:
                future = getattr(self.controller, action)(source=source)
        except GantuiError as exc:  # a bad key or value, refused before reaching the trainer
            self._refused(f"refused {action} from {source}: {exc}")
            return {"ok": False, "error": str(exc)}
        try:
            return {"ok": True, "ack": future.result(timeout=ACK_TIMEOUT)}
        except FutureTimeout:
            return {"ok": False, "error": f"the trainer did not answer within {ACK_TIMEOUT:.0f} s"}
        except GantuiError as exc:
            return {"ok": False, "error": str(exc)}

    def _refused(self, message: str) -> None:
        """Journal a refusal, at most one a second so a flood cannot fill the disk."""
        now = time.monotonic()
        if now - self._last_refusal < 1.0:
            self._suppressed += 1
            return
        if self._suppressed:
            message += f" ({self._suppressed} more refused since the last report)"
            self._suppressed = 0
        self._last_refusal = now
        self.refuse(message)


class _BadRequest(Exception):
    pass


def _same_user(conn: socket.socket) -> bool:
    """True when the peer runs as our uid (Linux SO_PEERCRED); permissive where unsupported."""
    if not hasattr(socket, "SO_PEERCRED"):
        return True
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return uid == os.getuid()


def _read_request(conn: socket.socket) -> dict[str, Any]:
    data = b""
    while b"\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_REQUEST:
            raise _BadRequest(f"request larger than {MAX_REQUEST} bytes")
    request = parse_record(data.split(b"\n", 1)[0])
    if request is None:  # not UTF-8 JSON, nested too deep, a number of thousands of digits...
        raise _BadRequest("not a JSON object")
    return request


def _discard_input(conn: socket.socket, limit: int = 1 << 20) -> None:
    """Read what the client still sends (bounded) so closing does not reset the reply."""
    conn.settimeout(0.5)
    received = 0
    with contextlib.suppress(OSError):
        while received < limit and (chunk := conn.recv(65536)):
            received += len(chunk)


def _send(conn: socket.socket, message: dict[str, Any]) -> None:
    conn.sendall(json.dumps(message, default=str).encode() + b"\n")


# ---- client (gantui ctl, gantui watch, gantui runs) ---------------------------------------

def request(run_dir: Path, message: dict[str, Any], timeout: float = ACK_TIMEOUT + 5) -> dict:
    """Send one request to the live run in ``run_dir``; returns its acknowledgement.

    Raises:
        RemoteError: no live run answers, or it refused the request.
    """
    path = socket_path(run_dir)
    try:
        exists = path.exists()
    except PermissionError:
        raise RemoteError(f"permission denied: {run_dir} belongs to another user") from None
    if not exists:
        raise RemoteError(f"no live run at {run_dir} (no control socket; it has ended or "
                          f"never started)")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        with addressable(path) as address:
            sock.connect(address)
        _send(sock, message)
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionRefusedError, FileNotFoundError):
        raise RemoteError(f"no live run at {run_dir} (its process has exited)") from None
    except PermissionError:
        raise RemoteError(f"permission denied: {run_dir} belongs to another user") from None
    except TimeoutError:
        raise RemoteError(f"the run at {run_dir} did not answer within {timeout:.0f} s") from None
    except OSError as exc:
        raise RemoteError(f"cannot reach the run at {run_dir}: {exc.strerror or exc}") from None
    finally:
        sock.close()
    reply = parse_record(data)
    if reply is None:
        raise RemoteError(f"the run at {run_dir} closed the connection without answering")
    if not reply.get("ok"):
        raise RemoteError(safe(reply.get("error", "refused"), 400))
    ack = reply.get("ack", {})
    return ack if isinstance(ack, dict) else {}


def check_changes(run_dir: Path, changes: dict[str, Any]) -> None:
    """Check ``set`` changes as the run will: against the live values its script declared
    (``run.json``, :mod:`gantui.api`), else the trainer's live keys.

    Raises:
        ConfigError: an unknown key or a bad value.
    """
    from gantui.config import parse_live
    from gantui.files import read_json_dict
    from gantui.live import owner_spec, parse_changes

    spec = owner_spec(read_json_dict(run_dir / "run.json"))
    if spec is not None:
        parse_changes(spec, changes)
        return
    for key, value in changes.items():
        parse_live(key, value)


def describe_live_keys(run_dir: Path) -> list[str]:
    """What ``set`` may change in the run at ``run_dir``: the live values its script declared,
    with type and bounds (``lr (float in [1e-06, 1])``), else the trainer's live keys."""
    from gantui.config import LIVE_KEYS
    from gantui.files import read_json_dict
    from gantui.live import owner_spec

    spec = owner_spec(read_json_dict(run_dir / "run.json"))
    if spec is None:
        return list(LIVE_KEYS)
    return [f"{name} ({key.describe()})" for name, key in spec.items()]


class RemoteController:
    """The :class:`~gantui.engine.control.Controller` interface, over a run's control socket.

    Methods return futures resolved from a worker thread, so a dashboard never blocks on a
    round trip; ``set`` validates locally first, as the local controller does.
    """

    def __init__(self, run_dir: Path, source: str = "watch") -> None:
        self.run_dir = run_dir
        self.source = source
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gantui-remote")

    def _submit(self, message: dict[str, Any]) -> Future:
        message = {**message, "source": self.source}
        return self._pool.submit(request, self.run_dir, message)

    def pause(self, source: str | None = None) -> Future:
        """Hold training after the current step."""
        return self._submit({"action": "pause"})

    def resume(self, source: str | None = None) -> Future:
        """Continue a paused run."""
        return self._submit({"action": "resume"})

    def checkpoint(self, source: str | None = None) -> Future:
        """Write a checkpoint now."""
        return self._submit({"action": "checkpoint"})

    def stop(self, source: str | None = None) -> Future:
        """Checkpoint, then end the run."""
        return self._submit({"action": "stop"})

    def set(self, changes: dict[str, Any], source: str | None = None) -> Future:
        """Change live hyperparameters (validated here, then by the trainer)."""
        check_changes(self.run_dir, changes)
        return self._submit({"action": "set", "changes": {k: str(v) for k, v in
                                                          changes.items()}})

    def close(self) -> None:
        """Release the worker threads."""
        self._pool.shutdown(wait=False, cancel_futures=True)
