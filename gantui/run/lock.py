"""Who owns a run: an exclusive ``flock`` on ``RUN_DIR/run.lock`` held by the training process.

The kernel drops the lock when the process exits, however it exits (kill -9, a crash), so a
held lock means a live owner even when that owner is paused (Ctrl-Z, SIGSTOP) or too busy to
answer on its control socket.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from gantui.errors import GantuiError

LOCK_NAME = "run.lock"


_HELD: set[int] = set()
"""Lock descriptors this process holds."""


def _close_in_child() -> None:
    """Forked children (DataLoader workers) must not keep the run's lock alive: an flock
    belongs to the open file, which a fork shares. Closing the child's copy leaves the
    parent's lock in place."""
    for fd in _HELD:
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


class RunBusy(GantuiError):
    """Another live process owns the run."""


class RunLock:
    """The training process's claim on a run directory."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock without waiting.

        Raises:
            RunBusy: a live process holds it.
        """
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise GantuiError(f"cannot lock {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunBusy(f"{self.path.parent} is being trained by a live process; steer it "
                          f"with gantui ctl or gantui watch") from None
        self._fd = fd
        _HELD.add(fd)

    def release(self) -> None:
        """Give the lock back (the file stays; it is only a handle)."""
        if self._fd is not None:
            _HELD.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def is_locked(run_dir: Path) -> bool:
    """True while a live process owns ``run_dir`` (paused or busy ones included)."""
    try:
        fd = os.open(run_dir / LOCK_NAME, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO: no hang
    except FileNotFoundError:
        return False
    except PermissionError:
        return True  # another user's run: we cannot tell, and must not take it
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops the shared lock we may have taken
    return False
