"""Tells the user when a run needs them: it finished, crashed, stopped on a non-finite loss, or
raised a health or quality warning.

Two ways out, both fed by the event stream and neither able to hold up training:

* :class:`CommandNotifier` runs the ``notify`` command (mail, a chat webhook, ``notify-send``)
  with the event in ``GANTUI_*`` environment variables: in a thread of its own, bounded in
  time, stdin closed. Its first failure is reported once (journaled by the caller); a kind of
  event notifies at most once per :data:`RATE_S` seconds.
* :func:`terminal_escape` is what the dashboard writes to its terminal: the OSC 9 or OSC 777
  sequence that iTerm2, kitty, WezTerm, Ghostty, foot and others turn into a desktop
  notification (so it reaches a laptop over SSH), wrapped for tmux, and a bell as the fallback.

:class:`Notices` decides which events are worth a notification; no Textual here, no torch.
"""

from __future__ import annotations

import collections
import contextlib
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from gantui import events as ev
from gantui.text import safe

RATE_S = 300.0
"""A kind of notice (``warning:collapse``, ``nonfinite``...) goes out at most once in this many
seconds; the ones held back are counted in the next one."""
TIMEOUT_S = 30.0
"""A notify command still running after this long is killed (its process group)."""
MAX_PENDING = 32
"""Notices waiting for the command; more are dropped (counted in
:attr:`CommandNotifier.dropped`)."""
MESSAGE_CHARS = 300
"""Longest message handed to a command or a terminal."""
TERMINAL_ENV = "GANTUI_NOTIFY_TERMINAL"
"""How the dashboard notifies through its terminal: ``auto`` (default), ``osc9``, ``osc777``,
``bell`` or ``off``."""
TERMINAL_MODES = ("auto", "osc9", "osc777", "bell", "off")
COMMAND_ENV = "GANTUI_NOTIFY"
"""The notify command for a script's run (:mod:`gantui.api`); ``gantui run --notify`` sets it."""
QUIET_ALERTS = frozenset({"control", "error", "notify"})
"""Alert kinds that are no notice: refused requests, errors the run's state reports (a crash
is told once, by its state), and a notify command's own failures (no loop)."""


@dataclass(frozen=True)
class Notice:
    """One thing to tell the user."""

    event: str
    """``finished``, ``crashed``, ``nonfinite`` or ``warning``."""
    kind: str
    """The warning's kind (``collapse``, ``d_wins``, ``quality``...), else the same as
    ``event``."""
    run: str
    """The run's name (its directory's)."""
    step: int
    message: str

    @property
    def text(self) -> str:
        """One line: ``ring-8-1234 finished at step 3000: finished 3000 steps; ...``."""
        what = self.kind if self.event == "warning" else self.event
        return safe(f"{self.run} {what} at step {self.step}: {self.message}", MESSAGE_CHARS)

    def environment(self, run_dir: str = "") -> dict[str, str]:
        """The ``GANTUI_*`` variables a notify command gets."""
        return {"GANTUI_RUN": self.run, "GANTUI_RUN_DIR": run_dir, "GANTUI_EVENT": self.event,
                "GANTUI_KIND": self.kind, "GANTUI_STEP": str(self.step),
                "GANTUI_MESSAGE": safe(self.message, MESSAGE_CHARS)}


class Notices:
    """Picks the events worth a notification, at most one per kind per ``rate_s`` seconds.

    Args:
        run: The run's name, for the notices (a :class:`~gantui.events.RunStarted` also sets it).
        rate_s: The shortest time between two notices of one kind.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(self, run: str = "", rate_s: float = RATE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.run = run
        self.rate_s = rate_s
        self.clock = clock
        self._last: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()
        self._diverged = False
        """A non-finite value was told and nothing ran since: the error state that stops the
        trainer on it is no new crash. A script logs on after a non-finite value, so a later
        error is one."""

    def see(self, event: ev.Event) -> Notice | None:
        """The notice for ``event``, or None (not worth one, or held back by the rate limit)."""
        notice = self._classify(event)
        if notice is None:
            return None
        key = notice.event if notice.event != "warning" else f"warning:{notice.kind}"
        now = self.clock()
        last = self._last.get(key)
        if last is not None and now - last < self.rate_s:
            self._held[key] += 1
            return None
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            notice = Notice(notice.event, notice.kind, notice.run, notice.step,
                            f"{notice.message} ({held} more held back since the last one)")
        return notice

    def remember(self, event: ev.Event) -> None:
        """Take in ``event`` without telling anyone (a run's history, replayed): the run's
        name and state carry over, the rate limit is untouched."""
        self._classify(event)

    def _classify(self, event: ev.Event) -> Notice | None:
        if isinstance(event, ev.RunStarted):
            self.run = event.name
            self._diverged = False
        elif isinstance(event, ev.Alert):
            if event.kind == "nonfinite":
                self._diverged = True
                return Notice("nonfinite", "nonfinite", self.run, event.step, event.message)
            if event.kind not in QUIET_ALERTS:
                return Notice("warning", event.kind, self.run, event.step, event.message)
        elif isinstance(event, (ev.Metrics, ev.Scalars)):
            self._diverged = False  # it went on (a script's non-finite value is a warning)
        elif isinstance(event, ev.StateChanged):
            if event.state == "running":
                self._diverged = False
            elif event.state == "finished":
                return Notice("finished", "finished", self.run, event.step, event.message)
            elif event.state == "error" and not self._diverged:
                return Notice("crashed", "crashed", self.run, event.step,
                              event.message or "the run ended with an error")
        return None


# ---- the terminal ----------------------------------------------------------------------------

def terminal_mode(env: Mapping[str, str]) -> tuple[str, bool]:
    """``(sequence, bell)`` for the terminal described by ``env``: the sequence is ``osc9``,
    ``osc777`` or ``""`` (none), ``bell`` whether a BEL follows it.

    ``auto``: OSC 777 on foot, urxvt and VTE terminals, OSC 9 elsewhere (iTerm2, kitty,
    WezTerm, Ghostty, Windows Terminal); the bell too, unless the terminal is one known to show
    the notification itself and no tmux stands between (tmux forwards the sequence only with
    ``allow-passthrough on``, but always passes a bell on).
    """
    wanted = env.get(TERMINAL_ENV, "auto").strip().lower() or "auto"
    if wanted not in TERMINAL_MODES:
        wanted = "auto"
    if wanted == "off":
        return "", False
    if wanted == "bell":
        return "", True
    if wanted in ("osc9", "osc777"):
        return wanted, False
    term = env.get("TERM", "")
    program = env.get("TERM_PROGRAM", "")
    if term.startswith(("foot", "rxvt")) or env.get("VTE_VERSION"):
        sequence = "osc777"
    else:
        sequence = "osc9"
    shows_it = (term.startswith(("foot", "xterm-kitty", "xterm-ghostty", "wezterm"))
                or program in ("iTerm.app", "WezTerm", "ghostty")
                or env.get("LC_TERMINAL") == "iTerm2" or "KITTY_WINDOW_ID" in env)
    return sequence, bool(env.get("TMUX")) or not shows_it


def terminal_escape(notice: Notice, env: Mapping[str, str] | None = None) -> str:
    """The bytes (as text) that turn ``notice`` into a desktop notification through the
    terminal described by ``env`` (default: this process's environment); ``""`` for none.

    Inside tmux (``$TMUX``) the sequence is wrapped in tmux's passthrough
    (``ESC P tmux; ... ESC \\``, each ESC doubled), which tmux 3.3 and later forward only with
    ``set -g allow-passthrough on``; the bell after it is the fallback tmux always passes on.
    """
    env = os.environ if env is None else env
    sequence, bell = terminal_mode(env)
    body = notice.text.replace("\x1b", "").replace("\x07", "")  # safe() already; doubly sure
    if sequence == "osc9":
        out = f"\x1b]9;gantui: {body}\x07"
    elif sequence == "osc777":
        title = f"gantui: {notice.run} {notice.event}".replace(";", ",")
        out = f"\x1b]777;notify;{safe(title, 80)};{body}\x07"
    else:
        out = ""
    if out and env.get("TMUX"):
        out = "\x1bPtmux;" + out.replace("\x1b", "\x1b\x1b") + "\x1b\\"
    return out + ("\x07" if bell else "")


# ---- the command -----------------------------------------------------------------------------

class CommandNotifier:
    """Runs ``command`` (with ``/bin/sh -c``) for every notice, one at a time, in a daemon
    thread: calling it (the trainer's ``emit`` may) never waits.

    The command gets ``GANTUI_RUN``, ``GANTUI_RUN_DIR``, ``GANTUI_EVENT``, ``GANTUI_KIND``,
    ``GANTUI_STEP`` and ``GANTUI_MESSAGE``; stdin is closed and stdout discarded. One that fails
    (cannot start, exits non-zero, outlives ``timeout_s``) is reported through ``report`` the
    first time only, with its last line of stderr; training is never affected.

    Args:
        command: A shell command line.
        run_dir: The run directory (``GANTUI_RUN_DIR``; its name is the default run name).
        report: Told the first failure, once, from the notifier's thread; must not block.
        timeout_s: How long one command may run.
        rate_s: See :class:`Notices`.
    """

    def __init__(self, command: str, run_dir: Path | str, report: Callable[[str], None], *,
                 timeout_s: float = TIMEOUT_S, rate_s: float = RATE_S) -> None:
        self.command = command
        self.run_dir = os.path.abspath(run_dir)
        self.report = report
        self.timeout_s = timeout_s
        self.notices = Notices(Path(run_dir).name, rate_s)
        self.sent = 0
        """Commands that ran to a zero exit."""
        self.failures = 0
        self.dropped = 0
        self._queue: queue.Queue[Notice | None] = queue.Queue(MAX_PENDING)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, event: ev.Event) -> None:
        """Consider ``event`` (an :data:`~gantui.events.Emit`); returns at once."""
        notice = self.notices.see(event)
        if notice is not None:
            self.push(notice)

    def start(self) -> CommandNotifier:
        """Start the command's thread now rather than at the first notice: a run that may end
        in an ``atexit`` handler (:mod:`gantui.api`) must, as Python 3.12+ starts no thread
        there."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="gantui-notify",
                                                daemon=True)
                self._thread.start()
        return self

    def push(self, notice: Notice) -> None:
        """Queue ``notice`` for the command (dropped when :data:`MAX_PENDING` wait)."""
        self.start()
        try:
            self._queue.put_nowait(notice)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float | None = None) -> None:
        """Let the queued notices' commands finish (each bounded by ``timeout_s``), waiting at
        most ``timeout`` seconds in all (default: ``timeout_s`` and a little)."""
        with self._lock:
            thread = self._thread
        if thread is None:
            return
        deadline = time.monotonic() + (self.timeout_s + 5 if timeout is None else timeout)
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=max(0.0, deadline - time.monotonic()))
        thread.join(max(0.0, deadline - time.monotonic()))

    def _work(self) -> None:
        while (notice := self._queue.get()) is not None:
            why = self._run(notice)
            if why is None:
                self.sent += 1
                continue
            self.failures += 1
            if self.failures == 1:
                with contextlib.suppress(Exception):  # a report that fails must not end us
                    self.report(f"notify command failed ({notice.event} at step "
                                f"{notice.step}): {why}; training is not affected, and later "
                                f"failures are not reported")

    def _run(self, notice: Notice) -> str | None:
        """Run the command for ``notice``; None when it worked, else why not."""
        env = {**os.environ, **notice.environment(self.run_dir)}
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", self.command], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                                    start_new_session=True, close_fds=True)
        except OSError as exc:
            return f"cannot start /bin/sh: {exc.strerror or exc}"
        try:
            _, err = proc.communicate(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return f"still running after {self.timeout_s:g} s, killed"
        if proc.returncode == 0:
            return None
        lines = [line for line in err.decode("utf-8", "replace").splitlines() if line.strip()]
        said = f": {safe(lines[-1], 200)}" if lines else ""
        how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
               else f"exit status {proc.returncode}")
        return how + said


def tee(*consumers: ev.Emit) -> ev.Emit:
    """One :data:`~gantui.events.Emit` that hands each event to every consumer in turn."""

    def emit(event: ev.Event) -> None:
        for consumer in consumers:
            consumer(event)

    return emit


def followed(drain: Callable[[], list[ev.Event]], command: str,
             run_dir: Path) -> tuple[Callable[[], list[ev.Event]], CommandNotifier]:
    """A ``drain`` (a run directory's follower, for ``gantui watch``) that also runs ``command``
    for what happens from now on: the first drain, the run's history, notifies nothing. The
    command's failure comes out of the drain as an :class:`~gantui.events.Alert` of kind
    ``notify`` (a watcher never writes into the run it watches)."""
    failures: collections.deque[str] = collections.deque()
    notifier = CommandNotifier(command, run_dir, failures.append)
    seen = {"first": True, "step": 0}

    def tapped() -> list[ev.Event]:
        events = drain()
        for event in events:
            if seen["first"]:
                notifier.notices.remember(event)
            else:
                notifier(event)
            seen["step"] = getattr(event, "step", seen["step"])
        seen["first"] = False
        while failures:
            events.append(ev.Alert(int(seen["step"]), "notify", failures.popleft()))
        return events

    return tapped, notifier
