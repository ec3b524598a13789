"""Prints the event stream as lines when there is no dashboard (``--no-ui``, pipes, nohup)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, NoReturn, TextIO

from gantui import events as ev
from gantui.errors import PEER_LOST_EXIT
from gantui.quality.describe import describe_value
from gantui.terminal import TerminalOutput
from gantui.text import duration, safe

if TYPE_CHECKING:  # the printer alone (gantui.api uses it) must not load the trainer
    from gantui.engine.trainer import Trainer
    from gantui.session import Session


class LinePrinter:
    """Turns events into readable lines. Write errors (a vanished terminal) silence it."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.total = 0
        self.broken = False
        self.crash: str | None = None
        """Why training crashed, once said: the error state and the closing line that
        follow do not say it again."""

    def line(self, event: ev.Event) -> str | None:
        """The line for ``event``, or None for events not printed (previews)."""
        if isinstance(event, ev.RunStarted):
            self.total = event.total_steps
            verb = "resuming" if event.resumed else "starting"
            return (f"{verb} {event.name} ({event.preset}) on {event.device}: "
                    f"{event.total_steps} steps -> {event.run_dir}")
        if isinstance(event, ev.Metrics):
            width = len(str(self.total))
            return (f"step {event.step:>{width}}/{self.total} ep {event.epoch:<3d} "
                    f"loss_d {event.loss_d:7.4f}  loss_g {event.loss_g:7.4f}  "
                    f"D(x) {event.d_real:.3f}  D(G(z)) {event.d_fake:.3f}/{event.d_fake_g:.3f}  "
                    f"{event.img_per_s:8,.0f} img/s  eta {duration(event.eta_s)}"
                    + (f"  data wait {event.data_wait:.0%}" if event.data_wait >= 0.05 else "")
                    + (f"  Q reads {event.info_acc:.0%}" if event.info_acc >= 0 else "")
                    + (f"  aug {event.aug_p:.0%}" if event.aug_p >= 0 else ""))
        if isinstance(event, ev.Scalars):
            return scalars_line(event, self.total)
        if isinstance(event, ev.Points):
            return (f"step {event.step}: samples cover {event.modes_covered}/{len(event.modes)} "
                    f"modes, {event.high_quality:.0%} high quality")
        if isinstance(event, ev.Quality):
            return f"step {event.step}: quality {quality_line(event)}"
        if isinstance(event, ev.Changed):
            return f"step {event.step}: {event.key} {event.old} -> {event.new}"
        if isinstance(event, ev.Checkpointed):
            return f"step {event.step}: checkpoint {event.path} ({event.reason})"
        if isinstance(event, ev.StateChanged):
            if event.state == "checkpointing" or (event.state in ("running", "starting")
                                                  and not event.message):
                return None
            if event.state == "error" and self.crash is not None and event.message == self.crash:
                return None  # the crash's own line said why
            return f"step {event.step}: {event.state}" + (f": {event.message}"
                                                          if event.message else "")
        if isinstance(event, ev.Alert):
            if event.kind == "error" and event.message.startswith(ev.CRASHED):
                self.crash = event.message[len(ev.CRASHED):]
                return f"step {event.step}: error: {event.message}"
            return f"step {event.step}: WARNING {event.message}"
        if isinstance(event, ev.Note):
            return f"{event.message}"
        return None

    def __call__(self, event: ev.Event) -> None:
        text = self.line(event)
        if text is None or self.broken:
            return
        text = safe(text)  # a request or a journal may carry escapes or lone surrogates
        try:
            try:
                print(text, file=self.out, flush=True)
            except UnicodeEncodeError:  # a terminal whose encoding lacks a character
                encoding = getattr(self.out, "encoding", None) or "ascii"
                printable = text.encode(encoding, "backslashreplace").decode(encoding)
                print(printable, file=self.out, flush=True)
        except (OSError, ValueError):  # EIO/EPIPE after the terminal went away
            self.broken = True


def scalars_line(event: ev.Scalars, total: int) -> str:
    """A script's own values (:mod:`gantui.api`) in the metrics line's layout:
    ``step  20/100 ep 0   loss 0.4127  acc 0.8812  lr 0.001  1,234 img/s  eta 1m``."""
    values = dict(event.values)
    epoch, speed, eta = (values.pop(k, None) for k in ("epoch", "img_per_s", "eta_s"))
    head = f"step {event.step:>{len(str(total))}}/{total}" if total else f"step {event.step}"
    if epoch is not None:
        head += f" ep {int(epoch):<3d}"
    parts = [head, *(f"{k} {_number(v)}" for k, v in values.items())]
    if speed is not None:
        parts.append(f"{speed:8,.0f} img/s")
    if eta is not None and total:
        parts.append(f"eta {duration(eta)}")
    return "  ".join(parts)


def _number(value: float) -> str:
    return f"{value:7.4f}" if 1e-3 <= abs(value) < 1e4 else f"{value:.4g}"


def quality_line(event: ev.Quality) -> str:
    """``judge_fd 7.12 (best 6.80 at step 2000) · classes 10 · cond_acc 97.1% · 2.1 s``."""
    head = describe_value(event.primary, event.value)
    best = ("best" if event.best_step == event.step else
            f"best {describe_value(event.primary, event.best_value)} at step {event.best_step}")
    extras = [describe_value(k, event.values[k]) for k in ("hq", "classes", "cond_acc", "kid")
              if k in event.values and k != event.primary]
    return " · ".join([f"{head} ({best})", *extras, f"{event.seconds:.1f} s"])


def run_headless(session: Session, out: TextIO | None = None, poll: float = 0.2) -> int:
    """Print ``session``'s events until its trainer ends; returns the process exit code.

    Ctrl-C or SIGTERM asks the trainer to checkpoint and stop; a second Ctrl-C quits at once
    (the checkpoints already on disk stay intact; the run lock goes with the process).
    SIGHUP is ignored: training carries on.
    """
    printer = LinePrinter(out if out is not None else terminal_out(session))
    received: list[str] = []  # signal names; the handler only records, the loop reports

    def on_signal(signum: int, _frame) -> None:
        received.append(signal.Signals(signum).name)
        if len(received) > 1 and signum == signal.SIGINT:
            for sig in (signal.SIGINT, signal.SIGTERM):  # no third signal mid-exit
                signal.signal(sig, signal.SIG_IGN)
            with contextlib.suppress(Exception):  # a print may be under way in this thread
                printer(ev.Note(session.trainer.step, "interrupted; the checkpoints on disk "
                                "are intact. Resume with: gantui train --resume "
                                f"{session.run_dir}"))
            abandon(session, 130)
        session.controller.stop(source=signal.Signals(signum).name)

    previous = _install({signal.SIGINT: on_signal, signal.SIGTERM: on_signal,
                         signal.SIGHUP: signal.SIG_IGN})
    reported = 0
    try:
        while session.alive:
            if len(received) > reported:
                reported = len(received)
                printer(ev.Note(session.trainer.step, f"{received[-1]}: writing a checkpoint, "
                                "then stopping (Ctrl-C again to quit without waiting)"))
            for event in session.queue.drain():
                printer(event)
            session.join(poll)
        for event in session.queue.drain():
            printer(event)
    finally:
        _install(previous)
    return finish(session, printer)


def terminal_out(session: Session) -> TextIO:
    """Where lines for the user go: ``sys.stdout``, through a
    :class:`~gantui.terminal.TerminalOutput` when it is a terminal, so that a terminal that stops
    reading (a hung SSH connection, Ctrl-S) holds the printing up as ever but cannot keep a stop
    of ``session`` from ending the process."""
    if not sys.stdout.isatty():
        return sys.stdout
    sys.stdout.flush()  # what is already buffered comes first
    return TerminalOutput(sys.stdout, patience=None,  # type: ignore[return-value]
                          hurry=lambda: session.trainer.stopping)


def abandon(session: Session, code: int) -> NoReturn:
    """Quit now without waiting for the trainer: close the control socket, drop any partial
    checkpoint of ours, journal that the run was stopped on purpose (``gantui runs`` would
    otherwise read a run whose process vanished as crashed), and exit without unwinding the
    training thread mid-kernel."""
    with contextlib.suppress(Exception):
        session.server.close()
    with contextlib.suppress(Exception):  # one unbuffered O_APPEND line, as the trainer's are
        step = session.trainer.step
        session.trainer.store.last_event(ev.to_record(ev.StateChanged(
            step, "stopped", f"interrupted at step {step} (Ctrl-C twice): quit without a "
            "final checkpoint; a resume starts from the last one on disk")))
    with contextlib.suppress(Exception):
        session.trainer.store.discard_partial()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def finish(session: Session, printer: LinePrinter) -> int:
    """Print how the run ended and how to continue it; returns the exit code."""
    state = session.state
    if session.error or state == "error":
        reason = f"{type(session.error[0]).__name__}: {session.error[0]}" if session.error else ""
        if session.error and printer.crash in (reason, str(session.error[0])):
            reason = ""  # the crash's own line said it
        detail = f": {reason}" if reason else ""
        printer(ev.Note(session.trainer.step, f"run ended with an error{detail}; run directory "
                        f"{session.run_dir}"))
        if not session.error and session.trainer.write_failure is not None:  # a full disk
            if session.trainer.last_good_checkpoint is not None:
                printer(ev.Note(session.trainer.step, f"free some space, then resume with: "
                                f"{resume_command(session)}"))
            else:
                printer(ev.Note(session.trainer.step, "no checkpoint was written; free some "
                                "space and start the run again"))
        return 1
    if state == "stopped":
        printer(ev.Note(session.trainer.step, f"resume with: {resume_command(session)}"))
    return 0


def resume_command(session: Session) -> str:
    """How to continue ``session``'s run: with as many ranks as it had."""
    size = session.trainer.world.size
    ranks = f" --nproc-per-node {size}" if size > 1 else ""
    return f"gantui train{ranks} --resume {session.run_dir}"


def worker_printer(rank: int, out: TextIO | None = None) -> ev.Emit:
    """What a rank other than 0 shows: its errors, one line each, on stderr."""
    stream = out if out is not None else sys.stderr

    def emit(event: ev.Event) -> None:
        if isinstance(event, ev.Alert) and event.kind in ("error", "nonfinite"):
            with contextlib.suppress(OSError, ValueError):
                print(safe(f"gantui rank {rank}: {event.message}"), file=stream, flush=True)

    return emit


def run_worker(trainer: Trainer) -> int:
    """Train a rank other than 0 of a torchrun launch: silent but for errors. SIGTERM or
    Ctrl-C asks for a stop, which every rank carries out at the same step (rank 0 writes the
    checkpoint); a second Ctrl-C quits at once. Returns the exit code."""
    from gantui.engine.distributed import RankFailed

    errors: list[BaseException] = []

    def body() -> None:
        try:
            trainer.run()
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    received: list[int] = []

    def on_signal(signum: int, _frame) -> None:
        received.append(signum)
        if len(received) > 1 and signum == signal.SIGINT:
            os._exit(130)
        trainer.controller.stop(source=signal.Signals(signum).name)

    thread = threading.Thread(target=body, name="gantui-trainer", daemon=True)
    previous = _install({signal.SIGINT: on_signal, signal.SIGTERM: on_signal,
                         signal.SIGHUP: signal.SIG_IGN})
    try:
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    finally:
        _install(previous)
    if any(isinstance(e, RankFailed) for e in errors):
        return PEER_LOST_EXIT
    if errors or trainer.state == "error":
        return 1
    return 0


def _install(handlers: dict) -> dict:
    """Install signal handlers (main thread only); returns the previous ones."""
    previous = {}
    for signum, handler in handlers.items():
        try:
            previous[signum] = signal.signal(signum, handler)
        except (ValueError, OSError):  # not the main thread, or an unsupported signal
            continue
    return previous


def follow(session: Session, timeout: float) -> list[ev.Event]:
    """Collect events until the run ends or ``timeout`` passes (for scripts and tests)."""
    deadline = time.monotonic() + timeout
    seen: list[ev.Event] = []
    while session.alive and time.monotonic() < deadline:
        seen.extend(session.queue.drain())
        session.join(0.05)
    seen.extend(session.queue.drain())
    return seen
