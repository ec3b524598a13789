"""A run in progress: a trainer in a named daemon thread, its controller and its event queue.

Everything that can fail on bad input (config, data, run directory, device, checkpoint)
fails in :func:`start`, in the caller's thread, as a one-line :class:`GantuiError`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gantui import config as config_mod
from gantui import events as ev
from gantui.config import Config, ConfigError
from gantui.data import datasets
from gantui.engine import fast
from gantui.engine.control import Controller
from gantui.engine.distributed import SINGLE, Channel, World
from gantui.engine.trainer import Trainer
from gantui.errors import GantuiError
from gantui.files import read_toml_dict
from gantui.models import user as usermodel
from gantui.notify import CommandNotifier, tee
from gantui.quality.tracker import describe, score_from_dict
from gantui.remote import ControlServer
from gantui.run.lock import RunBusy, RunLock
from gantui.run.restore import RESUME_KEYS, checker
from gantui.run.store import RunStore, default_run_name
from gantui.system import SystemSampler
from gantui.text import shown


def resolve_device(spec: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``, checked on this machine."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if spec == "cuda" or spec.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise GantuiError(f"--device {spec}: no CUDA device is available here; use "
                              f"--device cpu or auto")
        index = spec.partition(":")[2]
        if index:
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise GantuiError(f"--device {spec}: this machine has "
                                  f"{torch.cuda.device_count()} CUDA device(s)")
        return torch.device(spec)
    raise GantuiError(f"--device {spec!r}: expected auto, cpu, cuda or cuda:N")


@dataclass
class Session:
    """A started run: the trainer thread plus the handles to watch and steer it."""

    trainer: Trainer
    controller: Controller
    queue: ev.EventQueue
    run_dir: Path
    thread: threading.Thread
    server: ControlServer
    """Serves ``control.sock`` so ``gantui ctl`` / ``gantui watch`` can steer the run."""
    lock: RunLock
    """This process's claim on the run directory, held until the trainer ends."""
    system: SystemSampler | None = None
    """Samples GPU/CPU/RAM into the queue and ``system.jsonl`` while the trainer runs."""
    error: list[BaseException] = field(default_factory=list)
    """The exception that ended the trainer thread, if any."""
    notifier: CommandNotifier | None = None
    """Runs the ``notify`` command; the trainer thread waits for its last command at the
    end, so the process does not exit under it."""

    def join(self, timeout: float | None = None) -> None:
        """Wait for the trainer thread to end."""
        self.thread.join(timeout)

    @property
    def alive(self) -> bool:
        """True while the trainer thread runs."""
        return self.thread.is_alive()

    @property
    def state(self) -> str:
        """The trainer's current state."""
        return self.trainer.state


def prepare_resume(store: RunStore, sets: list[str] | tuple[str, ...] = (),
                   warn=None) -> tuple[str, Config, dict[str, Any], Path]:
    """The newest loadable checkpoint of ``store`` and its config, with the allowed ``--set``
    overrides applied: ``(preset, config, state, checkpoint path)``."""
    check = checker(read_toml_dict(store.path / "config.toml"))
    path, state = store.load_checkpoint(warn=warn, quarantine=True,  # we hold the lock
                                        check=check)
    store.claim_checkpoints(path)  # the files it may prune or replace: its own only
    values = dict(state["config"])
    for item in sets:
        key, value = config_mod.parse_assignment(item)
        if key not in RESUME_KEYS:
            if key not in config_mod.field_names():
                raise ConfigError(f"unknown key {shown(key)}; keys you can change on resume: "
                                  f"{', '.join(RESUME_KEYS)}")
            raise ConfigError(f"{key} cannot change when resuming (the checkpoint depends on "
                              f"it); keys you can change: {', '.join(RESUME_KEYS)}")
        values[key] = value
    values.update(config_mod.steps_over_epochs(values, sets))
    cfg = config_mod.from_dict(values)
    if (float(state["config"].get("ac_weight", 0.0)) > 0) != (cfg.ac_weight > 0):
        raise ConfigError("ac_weight cannot be switched on or off when resuming (the run's "
                          "classifier is built with it, or not); change it between 0 and "
                          "10000, above 0, in a run that has it")
    return str(state.get("preset", "custom")), cfg, state, path


def with_classes(cfg: Config) -> Config:
    """A conditional run on data that names its classes (class folders, an array's labels,
    CIFAR-10, Fashion-MNIST) takes ``n_classes`` and ``class_names`` from it.

    Raises:
        gantui.data.sources.DataError: the data is missing or unusable.
    """
    if not cfg.conditional:
        return cfg
    names = datasets.classes_of(cfg.dataset, cfg.data, cfg.conditional)
    if names is None:
        return cfg
    return cfg.replace(n_classes=len(names), class_names=names)


def model_changed(cfg: Config, state: dict[str, Any]) -> str:
    """A warning when a user's model file differs from the one that wrote the checkpoint (its
    weights still fit, or it would not have loaded); "" when unchanged or not recorded."""
    recorded = state.get("model_source")
    if not cfg.model or not isinstance(recorded, str) or not recorded:
        return ""
    now = usermodel.file_digest(cfg.model)
    if now == recorded:
        return ""
    return (f"the model source {cfg.model} changed since this checkpoint (sha256 "
            f"{recorded[:12]} then, {now[:12] or 'unreadable'} now); its weights still fit, "
            f"so training continues with the new code")


def start(cfg: Config | None, preset: str, *, runs_dir: Path = Path("runs"),
          name: str | None = None, device: str = "auto", resume: Path | None = None,
          sets: list[str] | tuple[str, ...] = (), on_nonfinite: str = "stop",
          queue_size: int = 10_000, world: World = SINGLE, channel: Channel | None = None,
          torch_device: torch.device | None = None) -> Session:
    """Set up a run (new, or resumed from ``resume``) and start its trainer thread.

    The process holds the run's lock (:mod:`gantui.run.lock`) until the trainer ends, so no other
    process can train the same run. A start that fails leaves nothing behind: a new run's
    directory is removed, a resumed run's files are untouched.

    Args:
        cfg: the configuration of a new run (ignored when resuming).
        preset: the preset name, for the record.
        runs_dir: parent of new run directories.
        name: run directory name; default ``<preset>-<timestamp>``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: a run directory to continue from its newest valid checkpoint.
        sets: ``KEY=VALUE`` overrides applied on resume (see :data:`RESUME_KEYS`).
        on_nonfinite: ``stop`` or ``pause`` when a loss goes NaN/inf.
        world, channel, torch_device: on rank 0 of a torchrun launch, the launch and its
            control channel (the other ranks run :func:`start_worker`) and this rank's device.
    """
    try:
        return _start(cfg, preset, runs_dir, name, device, resume, sets, on_nonfinite,
                      queue_size, world, channel, torch_device)
    except BaseException as exc:
        if channel is not None and not channel.setup_sent:  # the other ranks end too
            channel.send_setup({"error": str(exc)})
        raise


def _start(cfg: Config | None, preset: str, runs_dir: Path, name: str | None, device: str,
           resume: Path | None, sets: list[str] | tuple[str, ...], on_nonfinite: str,
           queue_size: int, world: World, channel: Channel | None,
           torch_device: torch.device | None) -> Session:
    if torch_device is None:
        torch_device = resolve_device(device)
    if resume is not None:
        store = RunStore.open(resume)
    else:
        assert cfg is not None
        cfg = with_classes(cfg)
        store = RunStore.create(runs_dir, name or default_run_name(preset),
                                cfg.to_dict() | {"preset": preset}, unique=name is None)
    lock = RunLock(store.path)
    try:
        lock.acquire()
    except RunBusy:
        if resume is None:
            store.remove_unused()
        raise
    try:
        return _start_locked(store, lock, cfg, preset, torch_device, resume is not None, sets,
                             on_nonfinite, queue_size, world, channel)
    except BaseException:
        lock.release()
        if resume is None:
            store.remove_unused()
        raise


def _start_locked(store: RunStore, lock: RunLock, cfg: Config | None, preset: str,
                  device: torch.device, resuming: bool, sets: list[str] | tuple[str, ...],
                  on_nonfinite: str, queue_size: int, world: World = SINGLE,
                  channel: Channel | None = None) -> Session:
    warnings: list[str] = []
    resume_state = None
    notes: list[ev.Event] = []
    store.check_journals()
    if resuming:
        preset, cfg, resume_state, ckpt = prepare_resume(store, sets, warn=warnings.append)
        step = int(resume_state["step"])
        notes = [ev.Alert(step, "data", w) for w in warnings]
        changed = model_changed(cfg, resume_state)
        if changed:
            notes.append(ev.Alert(step, "control", changed))
        notes.append(ev.Note(step, f"resuming from {ckpt} at step {step}"))
        stale = store.remove_stale_temp_files()
        if stale:
            notes.append(ev.Note(step, f"removed {len(stale)} half-written temp file(s) left "
                                 f"by an earlier process: {', '.join(p.name for p in stale[:3])}"))
    assert cfg is not None
    notes.append(ev.Note(int(resume_state["step"]) if resume_state else 0,
                         fast.set_threads(cfg)))
    notes += [ev.Note(notes[-1].step, note) for note in fast.speed_notes(cfg, device)]
    threads = fast.hand_over_threads()
    if world.distributed:
        notes.append(ev.Note(notes[-1].step, f"data parallel: {world.size} ranks of "
                             f"batch_size {cfg.batch_size} (a global batch of "
                             f"{world.size * cfg.batch_size}), each a distinct shard of every "
                             f"epoch; rank 0 writes this run directory"))
    if channel is not None:
        channel.send_setup({"cfg": cfg.to_dict(), "preset": preset, "run_dir": str(store.path),
                            "state": resume_state, "on_nonfinite": on_nonfinite})
    queue = ev.EventQueue(queue_size)
    controller = Controller()
    notifier = None
    if cfg.notify:  # its failure is journaled by the trainer (at the end, by _run)
        notifier = CommandNotifier(cfg.notify, store.path,
                                   lambda message: controller.journal("notify", message))
    emit = queue.put if notifier is None else tee(queue.put, notifier)
    trainer = Trainer(cfg, store=store, emit=emit, controller=controller, device=device,
                      preset=preset, name=store.path.name, resume_state=resume_state,
                      on_nonfinite=on_nonfinite, notes=notes, world=world, channel=channel,
                      threads=threads)
    if resume_state is not None:
        trainer.last_good_checkpoint = ckpt
        for journal in ("metrics.jsonl", "quality.jsonl"):
            moved = store.supersede_after(trainer.step, journal)
            if moved:
                aside = journal.replace(".jsonl", "-superseded.jsonl")
                trainer.add_note(ev.Note(trainer.step, f"{moved} {journal} record(s) written "
                                         f"after the checkpoint moved to {aside}"))
        best = store.best_record()
        kept = score_from_dict({"step": best.get("step"), "values": best.get("values"),
                                "primary": best.get("metric")})
        if kept is not None and trainer.quality.adopt(kept):
            trainer.add_note(ev.Note(trainer.step, f"the best checkpoint on disk (step "
                                     f"{kept.step}, {describe(kept)}) stays the one to beat"))
    server = ControlServer(store.path, controller, status=trainer.status,
                           refuse=lambda message: controller.journal("control", message))
    server.start()
    session: Session | None = None
    try:
        store.write_owner({"preset": preset, "device": str(device)})
        session = Session(trainer, controller, queue, store.path, threading.Thread(), server,
                          lock, notifier=notifier)
        session.system = SystemSampler(queue.put, step=lambda: trainer.step,
                                       record=store.path / "system.jsonl").start()
        session.thread = threading.Thread(target=_run, args=(session,), name="gantui-trainer",
                                          daemon=True)
        session.thread.start()
    except BaseException:
        server.close()
        if session is not None and session.system is not None:
            session.system.close()
        raise
    return session


def _run(session: Session) -> None:
    try:
        session.trainer.run()
    except BaseException as exc:  # reported to the consumer; the thread must not die silently
        session.error.append(exc)
    finally:
        if session.notifier is not None:
            _last_notice(session)
        if session.system is not None:
            session.system.close()  # it writes system.jsonl: done before the lock goes
        session.server.close()
        session.lock.release()


def _last_notice(session: Session) -> None:
    """Let the notify command of the run's last event (finished, crashed) run, bounded, and
    journal its failure, which the trainer, now done, no longer takes from its inbox."""
    assert session.notifier is not None
    session.notifier.close()
    try:
        session.trainer.commands.fail_pending(session.trainer.state)
        session.trainer.store.close()
    except Exception:  # noqa: BLE001 - a full disk: the journal line is lost, not the run
        pass


class _NoStore:
    """A rank other than 0 writes nothing: it knows the run directory's path only."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def close(self) -> None:
        pass


def start_worker(world: World, channel: Channel, device: torch.device,
                 emit: ev.Emit) -> Trainer | None:
    """On a rank other than 0: take the setup rank 0 sends and build this rank's trainer
    (None when rank 0 failed to start: it says why)."""
    setup = channel.broadcast()
    if "error" in setup:
        return None
    cfg = config_mod.from_dict(setup["cfg"])
    fast.set_threads(cfg)
    threads = fast.hand_over_threads()
    store = _NoStore(setup["run_dir"])
    return Trainer(cfg, store=store, emit=emit, controller=Controller(), device=device,  # type: ignore[arg-type]
                   preset=setup["preset"], name=store.path.name, resume_state=setup["state"],
                   on_nonfinite=setup["on_nonfinite"], world=world, channel=channel,
                   threads=threads)
