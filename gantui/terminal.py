"""This process's terminal, held so that it cannot wedge the process.

A hung SSH connection stops reading the pseudo-terminal: its buffer fills and every blocking
write to it waits for good. A terminal whose session leader was not this process (a wrapper
that opened the pty and was killed) goes away without a SIGHUP: its input reads end-of-file
at once, forever, and writes fail with EIO. Neither may stop training, and neither may keep a
stop from ending the process.

:class:`TerminalOutput` writes to the terminal through a non-blocking file of its own, so a
write waits only as long as it is told to; :class:`TerminalWatch` notices a terminal that went
away without telling anyone.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import threading
import time
from collections.abc import Callable
from typing import TextIO


def _stall_seconds() -> float:
    """``GANTUI_STALL_S`` (seconds, > 0) where set and valid, else 10."""
    try:
        value = float(os.environ.get("GANTUI_STALL_S", ""))
    except ValueError:
        return 10.0
    return value if 0 < value < 1e6 else 10.0


STALL_S = _stall_seconds()
"""A dashboard's terminal that takes no output at all for this long has stopped reading
(10 s; ``GANTUI_STALL_S`` sets another bound, e.g. for a link that often stalls longer)."""
STOPPING_STALL_S = 1.0
"""How long any write waits on a terminal that takes nothing once a stop is asked: the stop
must not wait on the terminal."""
WATCH_INTERVAL_S = 0.2
"""How often :class:`TerminalWatch` looks."""

_GONE = select.POLLHUP | select.POLLERR | select.POLLNVAL


class TerminalOutput:
    """A text stream to the terminal on ``stream`` that waits for it only so long.

    A terminal is reopened (a new open file description, so stdin and stdout keep their
    blocking mode; never as the controlling terminal) in non-blocking mode. A write then waits
    for the terminal to take its bytes, but gives the terminal up after ``patience`` seconds
    in which it took none (None: never), or :data:`STOPPING_STALL_S` once ``hurry()`` says a stop
    is under way; a write error (EIO from a terminal that hung up, EPIPE) gives it up at once.
    :attr:`lost` then says why and every later write is dropped, so nothing that writes here
    can block or fail. Something that is not a terminal is written to as before (blocking).

    Args:
        stream: The stream whose file descriptor to write to (``sys.__stderr__`` for Textual).
        patience: Seconds without progress after which the terminal counts as stalled.
        hurry: True once a stop is asked (checked while a write waits).
    """

    def __init__(self, stream: TextIO, patience: float | None = STALL_S,
                 hurry: Callable[[], bool] | None = None) -> None:
        self.source_fd = stream.fileno()
        self.encoding = getattr(stream, "encoding", None) or "utf-8"
        self.patience = patience
        self.hurry = hurry
        self.lost: str | None = None
        """Why the terminal was given up (``the terminal stopped reading ...``), or None."""
        self.fd, self.nonblocking = _reopen(self.source_fd)
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        """Write ``text`` (dropped once the terminal is lost); never raises on a dead terminal."""
        if text and self.lost is None and self.fd >= 0:
            data = text.encode(self.encoding, "backslashreplace")
            with self._lock:
                self._send(memoryview(data))
        return len(text)

    def _send(self, view: memoryview) -> None:
        waiting_since: float | None = None
        while view and self.lost is None:
            try:
                view = view[os.write(self.fd, view):]
                waiting_since = None
                continue
            except BlockingIOError:
                pass
            except OSError as exc:  # EIO: the terminal hung up; EPIPE, EBADF...
                self.lost = (f"the terminal went away ({errno.errorcode.get(exc.errno, exc)} on "
                             f"write)")
                return
            now = time.monotonic()
            waiting_since = waiting_since or now
            patience = self.patience
            if self.hurry is not None and self.hurry():
                patience = STOPPING_STALL_S if patience is None else min(patience,
                                                                         STOPPING_STALL_S)
            if patience is not None and now - waiting_since >= patience:
                self.lost = (f"the terminal stopped reading (it took no output for "
                             f"{now - waiting_since:.0f} s)")
                return
            poller = select.poll()
            poller.register(self.fd, select.POLLOUT)
            poller.poll(100)

    def flush(self) -> None:
        """Nothing to do: writes are not buffered."""

    def fileno(self) -> int:
        """The descriptor of the stream this writes for."""
        return self.source_fd

    def isatty(self) -> bool:
        """True for a terminal."""
        return self.nonblocking

    def close(self) -> None:
        """Close this writer's own descriptor; later writes are dropped."""
        with self._lock:
            if self.fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(self.fd)
                self.fd = -1


def _reopen(fd: int) -> tuple[int, bool]:
    """``(descriptor, non-blocking)``: the terminal on ``fd`` opened anew without blocking, or
    a duplicate of ``fd`` when it is not a terminal or cannot be reopened."""
    if os.isatty(fd):
        paths = [f"/proc/self/fd/{fd}"]
        with contextlib.suppress(OSError):
            paths.insert(0, os.ttyname(fd))
        for path in paths:
            try:
                new = os.open(path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
            except OSError:
                continue
            if os.path.samestat(os.fstat(new), os.fstat(fd)):
                return new, True
            os.close(new)
    return os.dup(fd), False


def hung_up(fds: tuple[int, ...]) -> bool:
    """True when one of ``fds`` reports a hang-up or an error (a pty whose master closed, a
    pipe whose writer left, a closed descriptor), without reading or writing anything."""
    poller = select.poll()
    for fd in fds:
        if fd >= 0:
            poller.register(fd, 0)  # POLLHUP, POLLERR and POLLNVAL are always reported
    return any(mask & _GONE for _fd, mask in poller.poll(0))


class TerminalWatch:
    """A daemon thread that notices a terminal that went away or stopped reading.

    Every :data:`WATCH_INTERVAL_S` it checks ``output.lost`` and whether stdin (and the
    output's terminal) hung up; from the first time one of them says so, it calls
    ``on_lost(reason)`` at every check until closed (``on_lost`` must not mind repeats: a
    repeat covers an app that was not yet ready to hear it).
    """

    def __init__(self, output: TerminalOutput, on_lost: Callable[[str], None],
                 stdin: int = 0) -> None:
        self.output = output
        self.on_lost = on_lost
        self.fds = (stdin, output.fd) if output.nonblocking else (stdin,)
        self.lost: str | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gantui-terminal", daemon=True)

    def start(self) -> TerminalWatch:
        """Start watching."""
        self._thread.start()
        return self

    def check(self) -> str | None:
        """Why the terminal is lost, or None while it is fine."""
        if self.lost is None:
            if self.output.lost is not None:
                self.lost = self.output.lost
            elif hung_up(self.fds):
                self.lost = "the terminal went away (its input ended)"
        return self.lost

    def _run(self) -> None:
        while not self._closed.wait(WATCH_INTERVAL_S):
            reason = self.check()
            if reason is not None:
                self.on_lost(reason)

    def close(self) -> None:
        """Stop watching (waits for the thread)."""
        self._closed.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()
