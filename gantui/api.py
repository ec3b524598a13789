"""Your own training loop, watched and steered like a ``gantui train`` run.

A handful of calls in any PyTorch script::

    import gantui.api as gantui

    run = gantui.init(config=vars(args), total_steps=args.steps)
    run.live("lr", args.lr, low=1e-6, high=1.0, apply=lambda v: set_lr(opt, v))
    run.on_checkpoint({"model": model, "opt": opt})
    with run:
        for step in range(args.steps):
            if not run.step(step):          # pause, checkpoint, stop happen here
                break
            loss = train_one_step()
            run.log(step + 1, loss=loss)    # tensors are read once per log interval
            if step % 100 == 0:
                run.image(step, samples)    # the preview and samples/

The run directory is the one ``gantui train`` writes (``config.toml``, ``metrics.jsonl``,
``events.jsonl``, ``samples/``, ``checkpoints/``, ``run.json``, ``system.jsonl``), locked by
this process and served on ``control.sock``, so ``gantui runs``, ``watch``, ``ctl``,
``compare``, ``report`` and ``export`` work on it unchanged. This module is a thin layer over
the same pieces (:mod:`gantui.run`, :mod:`gantui.remote`, :mod:`gantui.events`); it has no
engine of its own and never imports the trainer or the dashboard.

Cheap by design: :meth:`Run.log` keeps the values it is given (tensors unread) and
:meth:`Run.step` reads one flag; tensors are read in one batch per log interval, so the
loop never waits on the GPU or on a viewer. Bad input (a non-finite or non-numeric value,
an impossible image, a step that goes backwards) is one clear warning, never an exception in
the training loop.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, InvalidStateError
from pathlib import Path
from typing import Any

from gantui import events as ev
from gantui.engine.control import Command, Controller
from gantui.errors import GantuiError
from gantui.files import atomic_write_bytes
from gantui.headless import LinePrinter
from gantui.live import LiveKey, Spec, parse_changes, spec_to_json
from gantui.notify import COMMAND_ENV, CommandNotifier
from gantui.remote import ControlServer
from gantui.run.lock import RunLock
from gantui.run.store import RunStore, StoreError, default_run_name
from gantui.text import safe, shown

__all__ = ["Run", "RunError", "init"]

ANNOUNCE_ENV = "GANTUI_RUN_ANNOUNCE"
"""Set by ``gantui run``: a file where the script's first run writes its directory, so the
dashboard knows what to follow."""
WAITING_S = 3.0
"""A command not applied within this long is answered as queued (the script is between two
:meth:`Run.step` calls, or never calls it), rather than left hanging."""
RESERVED = frozenset({"step", "time"})
"""Names :meth:`Run.log` does not take: every record has them."""
_JOURNALED = (ev.RunStarted, ev.Changed, ev.Checkpointed, ev.StateChanged, ev.Alert, ev.Note,
              ev.LiveSpec)


class RunError(GantuiError):
    """A run that cannot be opened (its directory is taken, or locked by a live process)."""


class _Terminated(SystemExit):
    """Raised in the main thread by a second SIGTERM/SIGINT (or the first, when the script
    never reaches a step boundary): the script ends now, recorded as stopped."""


def init(config: Any = None, *, name: str | None = None, runs_dir: str | Path = "runs",
         total_steps: int = 0, log_every: int = 50, keep_checkpoints: int = 3,
         resume: bool = False, device: Any = None, label: str | None = None,
         echo: bool = True, system: bool = True, notify: str | None = None) -> Run:
    """Open a run directory for this script and start serving its control socket.

    Args:
        config: the script's settings (a dict, a dataclass or an ``argparse.Namespace``),
            saved as ``config.toml``; nested dicts become ``a.b`` keys.
        name: the run directory's name; default ``<script>-<timestamp>``.
        runs_dir: where run directories are made.
        total_steps: the steps the loop will run (for progress and ETA; 0: unknown).
        log_every: steps per metrics record: values logged in between are averaged, and
            tensors among them are read then, in one batch.
        keep_checkpoints: newest checkpoints kept in ``checkpoints/``.
        resume: continue the run directory ``name`` if it exists (its journals grow;
            :attr:`Run.last_checkpoint` is the newest checkpoint to load), else start it.
        device: shown beside the run's name (``cuda``, a ``torch.device``...).
        label: what ``gantui runs`` shows as the preset; default the script's file name.
        echo: print progress lines on stdout, as ``gantui train --no-ui`` does.
        system: sample GPU/CPU/RAM into ``system.jsonl`` (as ``gantui train`` does).
        notify: a shell command run when the run finishes, crashes or warns, as
            ``gantui train --notify`` runs it; ``GANTUI_NOTIFY`` (which ``gantui run
            --notify`` sets) takes its place when set.

    Raises:
        RunError: the directory exists (without ``resume``) or a live process owns it.
    """
    return Run(config, name=name, runs_dir=Path(runs_dir), total_steps=total_steps,
               log_every=log_every, keep_checkpoints=keep_checkpoints, resume=resume,
               device=device, label=label, echo=echo, system=system, notify=notify)


class _Inbox(Controller):
    """The script's command inbox: a flag that :meth:`Run.step` reads for the cost of an
    attribute, and an answer for commands the script is slow to reach."""

    def __init__(self, run: Run) -> None:
        super().__init__(parse=run._parse_live)
        self.run = run
        self.flag = False

    def submit(self, command: Command) -> Future:
        inner = super().submit(command)
        self.flag = True  # after the put: the script cannot clear it and miss the command
        outer: Future = Future()
        inner.add_done_callback(lambda done: _settle(outer, done))
        timer = threading.Timer(WAITING_S, self._waiting, args=(command, outer))
        timer.daemon = True
        timer.start()
        return outer

    def journal(self, kind: str, message: str) -> None:
        super().journal(kind, message)
        self.flag = True

    def _waiting(self, command: Command, outer: Future) -> None:
        if outer.done():
            return
        run = self.run
        if run._boundaries == 0:
            where = ("the script has not called run.step() yet (gantui applies commands "
                     "there); it is applied when the script does")
        else:
            age = time.monotonic() - run._boundary_time
            where = (f"the script is between two run.step() calls (the last at step "
                     f"{run._boundary_step}, {age:.0f} s ago); it is applied at the next")
        with contextlib.suppress(InvalidStateError):
            outer.set_result({"action": command.action, "step": run.current_step,
                              "waiting": True, "message": f"{command.action} queued: {where}"})


def _settle(outer: Future, done: Future) -> None:
    with contextlib.suppress(InvalidStateError):
        exc = done.exception()
        if exc is not None:
            outer.set_exception(exc)
        else:
            outer.set_result(done.result())


class Run:
    """One run of a user's own training loop; made by :func:`init`."""

    def __init__(self, config: Any, *, name: str | None, runs_dir: Path, total_steps: int,
                 log_every: int, keep_checkpoints: int, resume: bool, device: Any,
                 label: str | None, echo: bool, system: bool, notify: str | None) -> None:
        if not isinstance(log_every, int) or log_every < 1:
            raise RunError(f"log_every must be a whole number >= 1, not {shown(log_every)}")
        if not isinstance(keep_checkpoints, int) or keep_checkpoints < 1:
            raise RunError(f"keep_checkpoints must be >= 1, not {shown(keep_checkpoints)}")
        script = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "script"
        self.label = safe(label or script or "script", 60)
        self.config = _flat_config(config)
        self.total_steps = int(total_steps or 0)
        self.log_every = log_every
        self.keep_checkpoints = keep_checkpoints
        self.device = safe(str(device), 40) if device is not None else "-"
        self.printer = LinePrinter() if echo else None
        self.store, self.resumed = _open_store(runs_dir, name, self.label, self.config, resume)
        self.path = self.store.path
        """The run directory."""
        self.lock = RunLock(self.path)
        try:
            self.lock.acquire()
            self.store.check_journals()
        except GantuiError as exc:
            if not self.resumed:
                self.store.remove_unused()
            raise RunError(str(exc)) from None
        self.last_checkpoint: Path | None = next(reversed(self.store.checkpoint_paths()),
                                                 None) if self.resumed else None
        """The newest checkpoint in ``checkpoints/`` (on resume: the one to load)."""
        start = _checkpoint_step(self.last_checkpoint) or 0
        # what the loop has reached: its latest step boundary and latest logged step
        self._boundary_step = self._log_step = start
        self._boundaries = 0
        self._boundary_time = time.monotonic()
        self._spec: Spec = {}
        self._values: dict[str, Any] = {}
        self._appliers: dict[str, Callable[[Any], Any] | None] = {}
        self._saver: Callable[[Path], Any] | Mapping[str, Any] | None = None
        self._rows: list[tuple[int, dict[str, Any]]] = []
        self._flush_at = (start // log_every + 1) * log_every + 1
        self._record_step = start
        self._t_log = time.perf_counter()
        self._steps_in_log = 0
        self._paused_for = 0.0
        self._warned: set[str] = set()
        self._nonfinite: set[str] = set()
        self.paused = False
        self._stopping = False
        self._stop_source = ""
        self._signal: str | None = None
        self._terminated: str | None = None
        self._uncaught: BaseException | None = None
        self._closed = False
        self.state = "starting"
        self._inbox = _Inbox(self)
        self.controller = self._inbox
        self._notifier: CommandNotifier | None = None
        self.server = ControlServer(self.path, self._inbox, status=self.status,
                                    refuse=lambda message: self._inbox.journal("control",
                                                                               message))
        self._sampler = None
        try:
            self.server.start()
            self._write_owner()
            if system:
                from gantui.system import SystemSampler

                self._sampler = SystemSampler(None, step=lambda: self.current_step,
                                              record=self.path / "system.jsonl").start()
        except BaseException:
            self.server.close()
            self.lock.release()
            if not self.resumed:
                self.store.remove_unused()
            raise
        notify = os.environ.get(COMMAND_ENV) or notify
        if notify:  # its failure is journaled by the loop (at the end, by finish)
            self._notifier = CommandNotifier(
                notify, self.path, lambda message: self._inbox.journal("notify", message)
            ).start()
        self._emit(ev.RunStarted(str(self.path), self.path.name, self.label, self.device,
                                 start, self.total_steps, dict(self.config), "", self.resumed))
        if self.last_checkpoint is not None:
            self._emit(ev.Note(start, f"resuming: the newest checkpoint is "
                                      f"{self.last_checkpoint}"))
        self._set_state("running")
        self._previous_signals: dict[int, Any] = {}
        self._install_signals()
        self._previous_hook = sys.excepthook
        sys.excepthook = self._excepthook
        atexit.register(self._at_exit)
        _announce(self.path)

    # ---- live values ---------------------------------------------------------------------

    def live(self, name: str, value: Any, *, low: float | None = None,
             high: float | None = None, choices: tuple[str, ...] | list[str] = (),
             apply: Callable[[Any], Any] | None = None) -> Any:
        """Declare a value that ``gantui ctl RUN set NAME=V`` and the dashboard's ``e`` key may
        change while the loop runs; returns ``value``. Read the current one with
        ``run[NAME]``.

        Args:
            name: the key others use.
            value: its current value; its type (float, int, bool or str) is the type a
                change must have.
            low, high: the accepted range (numbers).
            choices: the accepted strings (str).
            apply: called with the new value at the step boundary where the change lands
                (push a learning rate into an optimizer's param groups, say).

        Raises:
            RunError: a bad declaration (an unsupported type, a value out of its bounds).
        """
        kind = {bool: "bool", int: "int", float: "float", str: "str"}.get(type(value))
        if kind is None:
            raise RunError(f"live value {shown(name)}: {type(value).__name__} is not one of "
                           f"float, int, bool, str")
        if not isinstance(name, str) or not name or safe(name, 60) != name or "=" in name:
            raise RunError(f"live value name {shown(name)}: use a short printable name "
                           f"without '='")
        try:
            key = LiveKey(name, kind, low, high, tuple(choices))
            key.parse(value)
        except GantuiError as exc:
            raise RunError(f"live value {name}: {exc}") from None
        self._spec = {**self._spec, name: key}  # replaced whole: the server thread reads it
        self._values[name] = value
        self._appliers[name] = apply
        self._write_owner()
        self._emit(ev.LiveSpec(self.current_step, spec_to_json(self._spec), dict(self._values)))
        return value

    def __getitem__(self, name: str) -> Any:
        """The current value of live value ``name``."""
        return self._values[name]

    @property
    def values(self) -> dict[str, Any]:
        """Every live value, current."""
        return dict(self._values)

    def _parse_live(self, key: str, value: Any) -> Any:
        return parse_changes(self._spec, {key: value})[key]

    # ---- logging -------------------------------------------------------------------------

    def log(self, step: int, values: Mapping[str, Any] | None = None, /,
            **scalars: Any) -> None:
        """Log scalars at ``step``: ``run.log(step, loss=loss, acc=acc)`` or a mapping.

        Floats, ints and one-element tensors (read later, in one batch per log interval:
        do not change them in place meanwhile). ``loss_d``, ``loss_g``, ``d_real``,
        ``d_fake``, ``grad_g``, ``grad_d`` and ``img_per_s`` fill the dashboard's GAN panels;
        ``epoch`` is the epoch; any other name gets a chart of its own.
        """
        if type(step) is not int or self._closed:
            step = self._as_step(step, "run.log") if not self._closed else None
            if step is None:
                return
        if step < self._log_step:
            self._warn("backwards-log", f"run.log: step {step} comes after step "
                       f"{self._log_step}; steps must not go backwards (these values are "
                       f"not recorded)")
            return
        if step >= self._flush_at:
            self._flush()
            self._flush_at = ((step - 1) // self.log_every + 1) * self.log_every + 1
        self._log_step = step
        self._rows.append((step, scalars if values is None else {**values, **scalars}))

    def image(self, step: int, images: Any, *, nrow: int | None = None) -> Path | None:
        """Save an image as the run's preview and ``samples/step-XXXXXXXX.png``.

        Args:
            images: a tensor or array: a grid ``(H, W)``, ``(C, H, W)`` or ``(H, W, C)``, or a
                batch ``(N, C, H, W)`` laid out as a grid; 1 or 3 channels; values in
                [-1, 1], [0, 1] or 0-255 (uint8).
            nrow: images per grid row (batches); default about the square root of N.

        Returns:
            The PNG written, or None when the image was unusable (a warning says why).
        """
        step = self._as_step(step, "run.image") if type(step) is not int else step
        if step is None or self._closed:
            return None
        try:
            grid = _to_grid(images, nrow)
        except ValueError as exc:
            self._warn(f"image:{exc}", f"run.image at step {step}: {exc}; not saved")
            return None
        try:
            return self.store.save_grid(step, grid)
        except OSError as exc:
            self._warn("image-write", f"run.image at step {step}: cannot write the PNG "
                       f"({exc.strerror or exc}); training continues")
            return None

    def _flush(self) -> None:
        """Average what was logged since the last record (one read of all its tensors) and
        append it to ``metrics.jsonl``."""
        rows, self._rows = self._rows, []
        if not rows:
            return
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        tensors: list[Any] = []  # on a GPU: read below in one batch (one sync)
        owners: list[str] = []
        tensor = _tensor_type()
        for _, row in rows:
            for name, value in row.items():
                kind = type(value)
                if kind is float or kind is int:
                    number = value
                elif tensor is not None and isinstance(value, tensor) and value.is_cpu and \
                        value.numel() == 1 and not value.dtype.is_complex:
                    number = value.item()  # on the CPU: no sync to avoid
                else:
                    number = self._number(name, value, tensors, owners, sums, counts)
                    if number is None:
                        continue
                if name in sums:
                    sums[name] += number
                    counts[name] += 1
                elif self._name_ok(name):
                    sums[name] = number
                    counts[name] = 1
        if tensors:
            for name, number in zip(owners, _read_tensors(tensors), strict=True):
                sums[name] += number
                counts[name] += 1
        step = rows[-1][0]
        now = time.perf_counter()
        elapsed = max(now - self._t_log - self._paused_for, 1e-9)
        steps = max(1, step - self._record_step)
        self._t_log, self._paused_for, self._record_step = now, 0.0, step
        values = {name: sums[name] / counts[name] for name in sums}
        record: dict[str, Any] = {"step": step, "epoch": int(values.pop("epoch", 0) or 0)}
        record.update(values)
        if self.total_steps and "eta_s" not in record:
            record["eta_s"] = max(0, self.total_steps - step) * elapsed / steps
        record["time"] = time.time()
        for name, value in values.items():
            if not math.isfinite(value) and name not in self._nonfinite:
                self._nonfinite.add(name)
                self._emit(ev.Alert(step, "nonfinite", f"{name} is not finite ({value}) at "
                                    f"step {step}: recorded as is; training continues"))
        try:
            self.store.append_metrics(record)
        except (OSError, ValueError) as exc:
            self._warn("metrics-write", f"cannot append to metrics.jsonl ({exc}); training "
                       f"continues")
        if self.printer is not None:
            shown_values = {k: v for k, v in record.items() if k not in ("step", "time")}
            self.printer(ev.Scalars(step, shown_values))

    def _name_ok(self, name: Any) -> bool:
        if not isinstance(name, str) or not name or safe(name, 40) != name or name in RESERVED:
            self._warn(f"name:{name!r}", f"run.log: {shown(name)} cannot be a value's name "
                       f"(printable text of at most 40 characters, not step or time); "
                       f"not recorded")
            return False
        return True

    def _number(self, name: str, value: Any, tensors: list[Any], owners: list[str],
                sums: dict[str, float], counts: dict[str, int]) -> float | None:
        """A float for ``value``, or None after queueing a tensor in ``tensors`` (read in one
        batch) or warning about a value that is not a number."""
        if _is_tensor(value):
            if value.numel() == 1 and not value.is_complex():
                if name not in sums and not self._name_ok(name):
                    return None
                tensors.append(value if value.ndim == 0 else value.reshape(()))
                owners.append(name)
                sums.setdefault(name, 0.0)  # the record keeps the order names came in
                counts.setdefault(name, 0)
                return None
            what = f"a tensor of shape {tuple(value.shape)}"
        elif hasattr(value, "dtype") and getattr(value, "size", 0) == 1 and \
                getattr(value.dtype, "kind", "") in "fiu":  # a NumPy number
            return float(value.item())
        elif isinstance(value, bool):
            what = "a bool"
        else:
            what = f"a {type(value).__name__}"
        self._warn(f"value:{name}", f"run.log: {name} is {safe(what, 60)}, not a number or a "
                   f"one-element tensor; not recorded")
        return None

    # ---- the step boundary ---------------------------------------------------------------

    def step(self, step: int) -> bool:
        """The step boundary: call once per iteration, at its top, with the steps done so far.

        Commands from ``gantui ctl`` and the dashboard take effect here: live values change
        (their ``apply`` runs), ``pause`` blocks until ``resume``, ``checkpoint`` saves,
        ``stop`` saves and makes this return False.

        Returns:
            False once the run should stop (end the loop, then let :meth:`finish` run).
        """
        if type(step) is not int:
            step = self._as_step(step, "run.step")
            if step is None:
                return not self._stopping
        if step < self._boundary_step:
            self._warn("backwards-step", f"run.step: step {step} comes after step "
                       f"{self._boundary_step}; steps must not go backwards")
        self._boundary_step = step
        self._boundaries += 1
        self._boundary_time = time.monotonic()
        if self._inbox.flag:
            self._commands()
        return not self._stopping

    @property
    def stopping(self) -> bool:
        """True once a stop was asked (``gantui ctl stop``, the dashboard, SIGTERM)."""
        return self._stopping

    @property
    def current_step(self) -> int:
        """The latest step the loop reported (boundary or log)."""
        return max(self._boundary_step, self._log_step)

    def _commands(self) -> None:
        self._inbox.flag = False
        if self._signal is not None:
            name, self._signal = self._signal, None
            self._emit(ev.Note(self.current_step, f"{name}: writing a checkpoint, then "
                                                  f"stopping ({name} again to end at once)"))
            self._apply(Command("stop", source=name))
        while (command := self._inbox.get()) is not None:
            self._apply(command)
        if self.paused and not self._stopping:
            self._wait_while_paused()

    def _wait_while_paused(self) -> None:
        self._flush()  # what was logged before the pause shows while it lasts
        started = time.perf_counter()
        while self.paused and not self._stopping and not self._closed:
            if self._signal is not None:
                self._commands()  # a SIGTERM while paused: stop
                continue
            command = self._inbox.get(timeout=0.1)
            if command is not None:
                self._apply(command)
        self._inbox.flag = True  # what came during the pause's last poll is not lost
        self._paused_for += time.perf_counter() - started

    def _apply(self, command: Command) -> None:
        """Carry out one command and answer it; a failure (a bad change, the script's own
        callback or save function raising) is journaled and answered, never raised."""
        try:
            ack = self._carry_out(command)
        except GantuiError as exc:
            self._emit(ev.Alert(self.current_step, "control", f"refused {command.action} "
                                f"from {command.source}: {exc}"))
            _answer(command, exc)
            return
        except Exception as exc:  # noqa: BLE001 - the script's callback or save function
            message = (f"{command.action} from {command.source} failed "
                       f"({type(exc).__name__}: {safe(exc, 200)}); training continues")
            self._emit(ev.Alert(self.current_step, "error", message))
            _answer(command, GantuiError(message))
            return
        _answer(command, ack)

    def _carry_out(self, command: Command) -> dict[str, Any]:
        action, step = command.action, self.current_step
        ack: dict[str, Any] = {"action": action, "step": step}
        if action == "pause":
            if not self.paused:
                self.paused = True
                self._set_state("paused", f"paused by {command.source}")
        elif action == "resume":
            if self.paused:
                self.paused = False
                self._set_state("running", f"resumed by {command.source}")
        elif action == "checkpoint":
            if self._saver is None:
                raise GantuiError("the script registered nothing to save (run.on_checkpoint)")
            ack["path"] = str(self.checkpoint(f"requested by {command.source}"))
        elif action == "stop":
            self._stopping = True
            self._stop_source = command.source
            self.paused = False
            if self._saver is not None:
                ack["path"] = str(self.checkpoint(f"stop requested by {command.source}"))
            self._emit(ev.Note(step, f"stop requested by {command.source} at step {step}: "
                                     f"the loop ends at this step boundary"))
        elif action == "set":
            ack["changes"] = self._set(command.changes)
        elif action == "journal":
            self._emit(ev.Alert(step, str(command.changes["kind"]),
                                str(command.changes["message"])))
        return ack

    def _set(self, changes: dict[str, Any]) -> list[dict[str, Any]]:
        applied = []
        for key, value in changes.items():
            old = self._values[key]
            if old == value and type(old) is type(value):
                continue
            apply = self._appliers.get(key)
            if apply is not None:
                try:
                    apply(value)
                except Exception as exc:  # noqa: BLE001 - the script's callback
                    done = "; ".join(f"{c['key']} set" for c in applied)
                    raise GantuiError(f"{key}: the script's apply({value!r}) raised "
                                      f"{type(exc).__name__}: {safe(exc, 160)}; {key} stays "
                                      f"{old!r}" + (f" ({done})" if done else "")) from None
            self._values[key] = value
            applied.append({"key": key, "old": old, "new": value})
            self._emit(ev.Changed(self.current_step, key, old, value))
        return applied

    # ---- checkpoints ---------------------------------------------------------------------

    def on_checkpoint(self, save: Callable[[Path], Any] | Mapping[str, Any]) -> None:
        """What a checkpoint saves: a function that writes the checkpoint to the path it is
        given, or a mapping of names to modules, optimizers (anything with ``state_dict()``)
        and plain values, saved with ``torch.save``. Either way the file lands atomically as
        ``checkpoints/ckpt-<step>.pt``."""
        if not callable(save) and not isinstance(save, Mapping):
            raise RunError("on_checkpoint takes a function of a path or a mapping of "
                           "state_dict()-able objects")
        self._saver = save

    def checkpoint(self, reason: str = "requested") -> Path:
        """Save a checkpoint now (as registered with :meth:`on_checkpoint`).

        Raises:
            GantuiError: nothing was registered, or the save failed (disk full...).
        """
        if self._saver is None:
            raise GantuiError("the script registered nothing to save (run.on_checkpoint)")
        step = self.current_step
        previous, self.state = self.state, "checkpointing"
        try:
            saver = self._saver
            write = saver if callable(saver) else lambda path: _save_mapping(
                saver, path, step, self.config)
            try:
                path = self.store.save_written(step, write, self.keep_checkpoints)
            except OSError as exc:
                raise GantuiError(f"checkpoint at step {step} failed "
                                  f"({exc.strerror or exc})") from None
        finally:
            self.state = previous
        self.last_checkpoint = path
        self._emit(ev.Checkpointed(step, str(path), reason))
        return path

    # ---- lifecycle -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """A plain snapshot for ``gantui ctl RUN status`` (safe from any thread)."""
        return {"step": self.current_step, "total_steps": self.total_steps,
                "state": self.state, "name": self.path.name, "preset": self.label,
                "device": self.device, "pid": os.getpid(), "live": dict(self._values),
                "world_size": 1, "best": None, "boundaries": self._boundaries}

    def finish(self, state: str | None = None, message: str = "") -> None:
        """End the run: record the last values, a final checkpoint (finished or stopped, when
        :meth:`on_checkpoint` registered one and none exists for this step) and the state;
        release the directory. Called for you by ``with run:`` and at interpreter exit;
        calling it again does nothing.

        Args:
            state: ``finished`` (default; ``stopped`` after a stop was asked), ``stopped``
                or ``error``.
        """
        if self._closed:
            return
        self._closed = True
        step = self.current_step
        state = state or ("stopped" if self._stopping else "finished")
        with contextlib.suppress(Exception):
            self._flush()
        if state in ("finished", "stopped") and self._saver is not None and \
                _checkpoint_step(self.last_checkpoint) != step:
            try:
                self.checkpoint("final" if state == "finished" else "stop")
            except Exception as exc:  # noqa: BLE001 - the end is recorded whatever happens
                self._emit(ev.Alert(step, "error", f"final checkpoint failed: "
                                    f"{type(exc).__name__}: {safe(exc, 200)}"))
        if not message:
            message = {"finished": f"finished at step {step}",
                       "stopped": f"stopped at step {step}"
                                  + (f" ({self._stop_source})" if self._stop_source else "")
                       }.get(state, "ended")
        if state in ("finished", "stopped") and self.last_checkpoint is not None:
            message += f"; checkpoint {self.last_checkpoint}"
        self._set_state(state, message)
        if self._notifier is not None:  # the last event's command runs (bounded) first
            self._notifier.close()
        while (command := self._inbox.get()) is not None:
            if command.action == "journal":  # the notify command's failure, say
                self._apply(command)
            else:
                _answer(command, GantuiError(f"run already {state}"))
        self._close()

    def _close(self) -> None:
        for signum, handler in self._previous_signals.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, handler)
        if sys.excepthook == self._excepthook:
            sys.excepthook = self._previous_hook
        atexit.unregister(self._at_exit)
        for close in (self._sampler.close if self._sampler else None, self.server.close,
                      self.store.close, self.lock.release):
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def crashed(self, exc: BaseException) -> None:
        """Record that the loop ended with ``exc`` (``error``; ``stopped`` for Ctrl-C or a
        signal) and release the run."""
        if self._closed:
            return
        if isinstance(exc, KeyboardInterrupt):
            self.finish("stopped", f"interrupted (Ctrl-C) at step {self.current_step}")
        elif isinstance(exc, _Terminated) or self._terminated:
            self.finish("stopped", f"ended by {self._terminated or 'a signal'} at step "
                                   f"{self.current_step}")
        elif isinstance(exc, SystemExit) and exc.code in (0, None):
            self.finish()
        else:
            why = f"{type(exc).__name__}: {safe(exc, 300)}"
            self._emit(ev.Alert(self.current_step, "error", f"training crashed: {why}"))
            self.finish("error", why)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, kind, exc, tb) -> bool:
        if exc is None:
            self.finish()
        else:
            self.crashed(exc)
        return False

    def _excepthook(self, kind, exc, tb) -> None:
        self._uncaught = exc
        self._previous_hook(kind, exc, tb)

    def _at_exit(self) -> None:
        """The script ended without :meth:`finish`: record how."""
        if self._terminated is not None:
            self.crashed(_Terminated())
        elif self._uncaught is not None:
            self.crashed(self._uncaught)
        else:
            self.finish()

    def _install_signals(self) -> None:
        """SIGTERM and Ctrl-C stop at the next step boundary after a checkpoint; a second one
        ends the script at once. Only where the script left the default handlers."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, default in ((signal.SIGINT, signal.default_int_handler),
                                (signal.SIGTERM, signal.SIG_DFL)):
            if signal.getsignal(signum) is default:
                self._previous_signals[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        # Only flags here: the loop may be inside a journal write or a queue's lock.
        name = signal.Signals(signum).name
        if self._boundaries == 0 or self._stopping or self._signal is not None or \
                self._closed:
            self._terminated = name
            for sig, handler in self._previous_signals.items():
                with contextlib.suppress(ValueError, OSError, TypeError):
                    signal.signal(sig, handler)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise _Terminated(128 + signum)
        self._signal = name
        self._inbox.flag = True

    # ---- helpers -------------------------------------------------------------------------

    def _as_step(self, step: Any, where: str) -> int | None:
        try:
            value = int(step.__index__()) if not isinstance(step, bool) else None
        except (AttributeError, TypeError, ValueError, RuntimeError):
            value = None
        if value is None or value < 0:
            self._warn(f"step:{where}", f"{where}: the step must be a whole number >= 0, not "
                       f"{safe(repr(step), 40)}; ignored")
            return None
        return value

    def _warn(self, key: str, message: str) -> None:
        """Journal a problem with the script's input once (it may recur every step)."""
        if key in self._warned:
            return
        self._warned.add(key)
        self._emit(ev.Alert(self.current_step, "control", message))

    def _set_state(self, state: str, message: str = "") -> None:
        self.state = state
        self._emit(ev.StateChanged(self.current_step, state, message))

    def _emit(self, event: ev.Event) -> None:
        if isinstance(event, _JOURNALED):
            try:
                self.store.append_event(ev.to_record(event))
            except (OSError, ValueError) as exc:
                if "journal" not in self._warned:
                    self._warned.add("journal")
                    print(f"gantui: cannot write events.jsonl ({exc}); training continues",
                          file=sys.stderr)
        if self.printer is not None:
            self.printer(event)
        if self._notifier is not None:
            self._notifier(event)

    def _write_owner(self) -> None:
        self.store.write_owner({"preset": self.label, "device": self.device, "api": 1,
                                "live": spec_to_json(self._spec)})


# ---- module helpers ------------------------------------------------------------------------

def _open_store(runs_dir: Path, name: str | None, label: str, config: dict[str, Any],
                resume: bool) -> tuple[RunStore, bool]:
    stem = Path(label).stem or "script"
    if resume and name is None:
        raise RunError("resume=True needs the name of the run to continue")
    if name is not None and (runs_dir / name).exists():
        if not resume:
            raise RunError(f"{runs_dir / name} already exists; continue it with resume=True "
                           f"or pick another name")
        try:
            return RunStore.open(runs_dir / name), True
        except StoreError as exc:
            raise RunError(str(exc)) from None
    try:
        return RunStore.create(runs_dir, name or default_run_name(stem), config,
                               unique=name is None), False
    except StoreError as exc:
        raise RunError(str(exc)) from None
    except OSError as exc:
        raise RunError(f"cannot write {runs_dir}: {exc.strerror or exc}") from None


def _flat_config(config: Any) -> dict[str, Any]:
    """The script's settings as the flat dict ``config.toml`` holds."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    elif not isinstance(config, Mapping) and hasattr(config, "__dict__"):
        config = vars(config)  # argparse.Namespace
    if not isinstance(config, Mapping):
        raise RunError(f"config must be a dict, a dataclass or a namespace, not "
                       f"{type(config).__name__}")
    flat: dict[str, Any] = {}

    def walk(prefix: str, mapping: Mapping) -> None:
        for key, value in mapping.items():
            name = f"{prefix}{key}"
            if isinstance(value, Mapping):
                walk(f"{name}.", value)
            elif value is None:
                continue  # TOML has no null
            elif isinstance(value, (bool, int, float, str)):
                flat[name] = value
            elif isinstance(value, (list, tuple)) and all(
                    isinstance(v, (bool, int, float, str)) for v in value):
                flat[name] = list(value)
            else:
                flat[name] = str(value)

    walk("", config)
    return {k: v for k, v in flat.items() if not (isinstance(v, float) and not math.isfinite(v))}


def _announce(path: Path) -> None:
    """Tell ``gantui run`` (its environment names a file) which directory to follow."""
    target = os.environ.pop(ANNOUNCE_ENV, "")
    if target:
        with contextlib.suppress(OSError):
            atomic_write_bytes(Path(target), str(path.resolve()).encode())


def _answer(command: Command, result: Any) -> None:
    with contextlib.suppress(InvalidStateError):
        if isinstance(result, BaseException):
            command.reply.set_exception(result)
        else:
            command.reply.set_result(result)


def _checkpoint_step(path: Path | None) -> int | None:
    if path is None:
        return None
    try:
        return int(path.stem.split("-")[1])
    except (IndexError, ValueError):
        return None


def _tensor_type() -> type | None:
    """``torch.Tensor`` when torch is loaded (a script without it logs plain numbers)."""
    torch = sys.modules.get("torch")
    return None if torch is None else torch.Tensor


def _is_tensor(value: Any) -> bool:
    tensor = _tensor_type()
    return tensor is not None and isinstance(value, tensor)


def _read_tensors(tensors: list[Any]) -> list[float]:
    """Every one-element tensor as a float: one stack and one read per device and dtype."""
    import torch

    groups: dict[tuple, list[int]] = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault((tensor.device, tensor.dtype), []).append(i)
    out = [math.nan] * len(tensors)
    with torch.no_grad():
        for indices in groups.values():
            stacked = torch.stack([tensors[i] for i in indices]).double()
            for i, value in zip(indices, stacked.tolist(), strict=True):
                out[i] = value
    return out


def _save_mapping(saver: Mapping[str, Any], path: Path, step: int,
                  config: dict[str, Any]) -> None:
    import torch

    state: dict[str, Any] = {"step": step, "config": dict(config)}
    for key, value in saver.items():
        state[key] = value.state_dict() if hasattr(value, "state_dict") else value
    torch.save(state, path)


MAX_SIDE = 8192
"""Largest image side :meth:`Run.image` takes."""


def _to_grid(images: Any, nrow: int | None) -> Any:
    """``images`` as a (C, H, W) float grid in [0, 1] on the CPU.

    Raises:
        ValueError: a shape or type that is not an image, with what was expected.
    """
    import torch

    if not _is_tensor(images):
        try:
            import numpy as np

            images = torch.from_numpy(np.array(images))
        except (TypeError, ValueError, RuntimeError) as exc:
            raise ValueError(f"not an image ({type(images).__name__}: {safe(exc, 60)})") \
                from None
    x = images.detach()
    if x.is_complex():
        raise ValueError("complex values are not an image")
    expected = ("expected (H, W), (C, H, W), (H, W, C) or a batch (N, C, H, W) with 1 or 3 "
                f"channels, got shape {tuple(x.shape)}")
    if x.dim() == 2:
        x = x[None]
    if x.dim() == 3 and x.shape[0] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(2, 0, 1)
    if x.dim() == 4 and x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        x = x.permute(0, 3, 1, 2)
    if x.dim() not in (3, 4) or x.shape[-3] not in (1, 3) or x.numel() == 0:
        raise ValueError(expected)
    if max(x.shape[-1], x.shape[-2]) > MAX_SIDE:
        raise ValueError(f"sides of at most {MAX_SIDE} pixels, got shape {tuple(x.shape)}")
    if x.dim() == 4 and x.shape[0] > 1024:
        raise ValueError(f"at most 1024 images in a batch, got {x.shape[0]}")
    uint8 = x.dtype == torch.uint8
    x = x.float().cpu().nan_to_num(0.0)
    if uint8 or float(x.max()) > 1.5:
        x = x / 255.0
    elif float(x.min()) < 0:
        x = (x + 1) / 2  # a generator's tanh
    x = x.clamp(0, 1)
    if x.dim() == 3:
        return x
    from gantui.data.grids import grid_image

    n = x.shape[0]
    cols = nrow if isinstance(nrow, int) and nrow >= 1 else max(1, round(math.sqrt(n)))
    return grid_image(x * 2 - 1, cols)
