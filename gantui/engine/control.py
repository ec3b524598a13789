"""Commands into a running trainer, applied between steps.

Any thread may call :class:`Controller` methods; each returns a :class:`~concurrent.futures.Future`
that the trainer completes with an acknowledgement dict (what was applied, at which step) or
fails with a :class:`~gantui.errors.GantuiError`.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from gantui.config import parse_live

ACTIONS = ("pause", "resume", "checkpoint", "stop", "set")


@dataclass
class Command:
    """One request: ``action`` in :data:`ACTIONS`; ``changes`` for ``set`` (already typed)."""

    action: str
    changes: dict[str, Any] = field(default_factory=dict)
    source: str = "local"
    """Who sent it (``local``, ``ui``, ``ctl``), for the journal."""
    reply: Future = field(default_factory=Future)


class Controller:
    """A thread-safe command inbox shared by the trainer and whoever steers it.

    Args:
        parse: ``(key, value) -> typed value`` for ``set``, raising
            :class:`~gantui.config.ConfigError`; default the trainer's live keys
            (:func:`~gantui.config.parse_live`), a script's own for :mod:`gantui.api`.
    """

    def __init__(self, parse: Callable[[str, Any], Any] = parse_live) -> None:
        self._inbox: queue.Queue[Command] = queue.Queue()
        self._parse = parse

    def submit(self, command: Command) -> Future:
        """Queue ``command`` for the trainer; the future resolves once it is applied."""
        if command.action not in ACTIONS and command.action != "journal":
            raise ValueError(f"unknown action {command.action!r}")
        self._inbox.put(command)
        return command.reply

    def pause(self, source: str = "local") -> Future:
        """Hold training after the current step."""
        return self.submit(Command("pause", source=source))

    def resume(self, source: str = "local") -> Future:
        """Continue a paused run."""
        return self.submit(Command("resume", source=source))

    def checkpoint(self, source: str = "local") -> Future:
        """Write a checkpoint now."""
        return self.submit(Command("checkpoint", source=source))

    def stop(self, source: str = "local") -> Future:
        """Checkpoint, then end the run."""
        return self.submit(Command("stop", source=source))

    def set(self, changes: dict[str, Any], source: str = "local") -> Future:
        """Change live hyperparameters. Values are validated here, in the caller's thread.

        Raises:
            ConfigError: a key that is not live or a value of the wrong type or range.
        """
        typed = {key: self._parse(key, value) for key, value in changes.items()}
        return self.submit(Command("set", typed, source=source))

    def journal(self, kind: str, message: str) -> None:
        """Ask the trainer to journal an :class:`~gantui.events.Alert` (never blocks): a refused
        outside request, a lost terminal..."""
        self._inbox.put(Command("journal", {"kind": kind, "message": message}))

    @property
    def pending(self) -> bool:
        """True when a command waits (cheap: for a loop that checks every step)."""
        return not self._inbox.empty()

    def get(self, timeout: float | None = None) -> Command | None:
        """Next command (trainer side); blocks up to ``timeout`` seconds, None if none came."""
        try:
            if timeout is None:
                return self._inbox.get_nowait()
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None
