"""Child processes that end with whoever started them.

A launcher (``gantui bench``, ``gantui sweep``, ``gantui train --nproc-per-node``) starts each
child as a :class:`Child`. The child inherits a *lifeline*: the read end of a pipe whose
write end only the launcher holds. A child that calls :func:`follow_parent` as it starts
(``python -m gantui`` does, and so does ``python -m gantui.procs MODULE`` for a program that
knows nothing of gantui, such as torchrun) watches it from a thread: end of file means the
launcher is gone, however it went (a signal it handled, one it could not, SIGKILL, a crash),
and the child stops itself: SIGTERM (a gantui training writes a checkpoint and exits), then
SIGKILL when it has not ended within a bound. Unlike ``PR_SET_PDEATHSIG`` this has no race at
start (a child that looks after its parent is already gone reads end of file at once), does
not fire when merely the thread that started the child ends, and can be called off:
:meth:`Child.release` lets a child outlive its launcher on purpose.

The launcher side: :meth:`Child.end` stops a child (its whole process group when it has one)
politely, then surely, within a bound; :func:`on_stop_signals` routes SIGTERM, SIGINT and
SIGHUP to one handler while a launcher waits on its children.

This module sits at the bottom: it imports nothing from gantui.
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

LIFELINE_ENV = "GANTUI_LIFELINE"
"""``FD:GRACE``: the inherited file descriptor of a child's lifeline and how many seconds it
may take to stop once its launcher is gone (removed from the environment once read)."""
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
"""The signals that stop a launcher, and through it its children."""
GRACE_S = 60.0
"""How long a stopped training may take to checkpoint and exit before it is killed."""
_RELEASE = b"r"


class Child(subprocess.Popen):
    """A child process holding a lifeline to this one; a :class:`subprocess.Popen`.

    Args:
        args: the command, as for :class:`subprocess.Popen`.
        group: start it in a session (and process group) of its own, so a terminal's signals
            do not reach it and :meth:`end` ends the whole group (torchrun and its ranks).
        grace: how long the child may take to stop by itself once this process is gone,
            before it kills itself (see :func:`follow_parent`).
        **kwargs: anything else :class:`subprocess.Popen` takes (``env`` is copied).
    """

    def __init__(self, args: list[str], *, group: bool = False, grace: float = GRACE_S,
                 **kwargs: Any) -> None:
        read, write = os.pipe()  # both non-inheritable; pass_fds hands the child its end
        env = dict(kwargs.pop("env", None) or os.environ)
        env[LIFELINE_ENV] = f"{read}:{grace:g}"
        kwargs["pass_fds"] = (*kwargs.get("pass_fds", ()), read)
        self.group = group
        self._lifeline: int | None = write
        try:
            super().__init__(args, env=env, start_new_session=group, **kwargs)
        except BaseException:
            self._cut()
            raise
        finally:
            os.close(read)

    def release(self) -> None:
        """Let the child outlive this process: it stops watching its lifeline."""
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.write(self._lifeline, _RELEASE)
            self._cut()

    def end(self, grace: float = GRACE_S, sig: int = signal.SIGTERM) -> int:
        """Stop the child: ``sig`` (to its group, if it has one), up to ``grace`` seconds for
        it (and the rest of its group) to exit, then SIGKILL. Returns its exit code; safe to
        call on a child that has already ended. See :func:`end_all`."""
        end_all([self], grace, sig)
        return self.returncode

    def poll(self) -> int | None:
        code = super().poll()
        if code is not None:
            self._cut()
        return code

    def wait(self, timeout: float | None = None) -> int:
        code = super().wait(timeout)
        self._cut()
        return code

    def _cut(self) -> None:
        if self._lifeline is not None:
            with contextlib.suppress(OSError):
                os.close(self._lifeline)
            self._lifeline = None

    def _members(self) -> list[Any]:
        """The rest of the child's process group (psutil processes; none without a group):
        also members whose parent has gone, torchrun's ranks after a kill of torchrun."""
        if not self.group:
            return []
        import psutil

        out = []
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.Error, OSError):
                if proc.pid != self.pid and os.getpgid(proc.pid) == self.pid:
                    out.append(proc)
        return out

    def _alive(self, members: list[Any]) -> bool:
        return self.poll() is None or any(_running(p) for p in members)

    def _send(self, sig: int, members: list[Any]) -> None:
        if self.group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
        elif self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.send_signal(sig)
        if sig == signal.SIGKILL:  # also members that left the group
            for proc in members:
                with contextlib.suppress(Exception):
                    proc.kill()


def end_all(children: list[Child], grace: float = GRACE_S, sig: int = signal.SIGTERM
            ) -> None:
    """Stop ``children`` together: ``sig`` to each (to its process group, if it has one),
    up to ``grace`` seconds for all of them to exit, then SIGKILL to what is left.

    A signal that interrupts the wait (a second Ctrl-C raising) still ends them, at once."""
    members = {id(child): child._members() for child in children}
    try:
        for child in children:
            if child._alive(members[id(child)]):
                child._send(sig, members[id(child)])
        deadline = time.monotonic() + grace
        while (any(c._alive(members[id(c)]) for c in children)
               and time.monotonic() < deadline):
            time.sleep(0.05)
    finally:
        for child in children:
            if child._alive(members[id(child)]):
                child._send(signal.SIGKILL, members[id(child)])
            child.wait()


def wait_after_stop(child: Child, signalled: list[int], grace: float = GRACE_S) -> int:
    """A launcher's wait on ``child``: its exit code. ``signalled`` is the list a stop-signal
    handler appends to; ``grace`` seconds after the first stop signal, a child that has not
    ended is killed (its group included; checkpoints on disk are whole: writes are atomic).
    The grace is counted from the signal, however long the wait had gone on before it."""
    deadline: float | None = None
    while True:
        if signalled and deadline is None:
            deadline = time.monotonic() + grace
        try:
            return child.wait(0.2)
        except subprocess.TimeoutExpired:
            if deadline is not None and time.monotonic() >= deadline:
                return child.end(0, signal.SIGKILL)


def _running(proc: Any) -> bool:
    """A psutil process that still runs (a zombie does not: nothing may ever reap it)."""
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ---- the child's side ----------------------------------------------------------------------

def follow_parent(on_orphan: Callable[[], None] | None = None,
                  grace: float | None = None) -> bool:
    """In a child started as a :class:`Child`: end this process when its launcher ends.

    A thread waits on the lifeline. When the launcher is gone it calls ``on_orphan``
    (default: SIGTERM to this process, which a gantui training answers with a checkpoint and
    an exit); ``grace`` seconds later (default: what the launcher gave) it SIGKILLs this
    process, and its process group when it leads one. Does nothing (False) when this process
    was not started as a Child.
    """
    raw = os.environ.pop(LIFELINE_ENV, None)  # never handed on to this process's children
    if raw is None:
        return False
    try:
        fd_text, _, grace_text = raw.partition(":")
        fd = int(fd_text)
        if grace is None:
            grace = float(grace_text) if grace_text else GRACE_S
        if not stat.S_ISFIFO(os.fstat(fd).st_mode):
            return False
        os.set_inheritable(fd, False)
    except (ValueError, OSError):
        return False
    threading.Thread(target=_watch, args=(fd, on_orphan or _terminate_self, grace),
                     name="gantui-lifeline", daemon=True).start()
    return True


def _watch(fd: int, on_orphan: Callable[[], None], grace: float) -> None:
    try:
        while True:
            try:
                data = os.read(fd, 1)
            except InterruptedError:
                continue
            except OSError:
                data = b""
            if data == _RELEASE:
                return
            if not data:
                break
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
    on_orphan()
    time.sleep(grace)
    with contextlib.suppress(OSError):  # it did not end in time
        if os.getpgrp() == os.getpid():
            os.killpg(0, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)


def _terminate_self() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def terminate_children() -> None:
    """SIGTERM to this process's children (not to itself): how a wrapped program that
    knows nothing of gantui (torchrun) has its workers stop as they would on their own."""
    import psutil

    with contextlib.suppress(psutil.Error):
        for child in psutil.Process().children():
            with contextlib.suppress(psutil.Error):
                child.send_signal(signal.SIGTERM)


# ---- the launcher's side -------------------------------------------------------------------

@contextlib.contextmanager
def on_stop_signals(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Route SIGTERM, SIGINT and SIGHUP to ``handler(signum, frame)`` inside the block, then
    put the previous handlers back (in the main thread; elsewhere nothing changes)."""
    previous = {}
    for sig in STOP_SIGNALS:
        with contextlib.suppress(ValueError, OSError):  # not the main thread
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def detach_from_terminal() -> None:
    """Point stdin, stdout and stderr at /dev/null: the terminal is gone (a dropped SSH
    connection), and a write to it must neither fail nor block what carries on without it."""
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        with contextlib.suppress(OSError):
            os.dup2(devnull, fd)
    os.close(devnull)


class Stopped(KeyboardInterrupt):
    """A stop signal that unwinds a launcher (raised by :func:`raise_stopped`)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def raise_stopped() -> Callable[[int, Any], None]:
    """A handler for :func:`on_stop_signals` that raises :class:`Stopped` on the first signal
    and ignores the ones that arrive while the launcher unwinds (its clean-up is bounded)."""
    received: list[int] = []

    def handler(signum: int, _frame: Any) -> None:
        received.append(signum)
        if len(received) == 1:
            raise Stopped(signum)

    return handler


SCRATCH_PREFIX = "gantui-scratch-"
"""The temporary folder :func:`guarded` hands its module starts with this."""


def guarded(module: str, args: list[str], scratch_option: str = "") -> list[str]:
    """``python -m gantui.procs MODULE ARGS``: run a module that knows nothing of gantui
    (torchrun) so that its children stop when the launcher above it is gone.

    ``scratch_option`` (such as torchrun's ``--log-dir``): the module is given a temporary
    folder of its own through this option, removed when the module ends, however the
    launcher went (torchrun would leave a ``torchelastic_*`` folder in /tmp per launch).
    """
    scratch = [f"--scratch={scratch_option}"] if scratch_option else []
    return [sys.executable, "-m", "gantui.procs", *scratch, module, *args]


def _main(argv: list[str]) -> None:
    import runpy
    import shutil
    import tempfile

    option = argv.pop(0).partition("=")[2] if argv[:1] and argv[0].startswith(
        "--scratch=") else ""
    if not argv:
        print("usage: python -m gantui.procs [--scratch=OPTION] MODULE [ARGS...]",
              file=sys.stderr)
        raise SystemExit(2)
    follow_parent(terminate_children)
    folder = tempfile.mkdtemp(prefix=SCRATCH_PREFIX) if option else ""
    sys.argv = [argv[0], *([f"{option}={folder}"] if option else []), *argv[1:]]
    try:
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    _main(sys.argv[1:])
