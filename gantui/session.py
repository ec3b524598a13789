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
from gantui.config import LIVE_KEYS, Config, ConfigError
from gantui.control import Controller
from gantui.errors import GantuiError
from gantui.remote import ControlServer, ensure_not_live
from gantui.store import RunStore, default_run_name
from gantui.trainer import Trainer

# Keys a resumed run may change; others would no longer fit the checkpoint.
RESUME_KEYS = (*LIVE_KEYS, "steps", "epochs", "data", "num_workers", "keep_checkpoints",
               "amp")


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
    error: list[BaseException] = field(default_factory=list)
    """The exception that ended the trainer thread, if any."""

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


def prepare_resume(run_dir: Path, sets: list[str] | tuple[str, ...] = (),
                   warn=None) -> tuple[RunStore, str, Config, dict[str, Any], Path]:
    """Open ``run_dir`` and its newest loadable checkpoint; apply allowed ``--set`` overrides."""
    store = RunStore.open(run_dir)
    ensure_not_live(run_dir)
    path, state = store.load_checkpoint(warn=warn)
    values = dict(state["config"])
    for item in sets:
        key, value = config_mod.parse_assignment(item)
        if key not in RESUME_KEYS:
            if key not in config_mod.field_names():
                raise ConfigError(f"unknown key {key!r}; keys you can change on resume: "
                                  f"{', '.join(RESUME_KEYS)}")
            raise ConfigError(f"{key} cannot change when resuming (the checkpoint depends on "
                              f"it); keys you can change: {', '.join(RESUME_KEYS)}")
        values[key] = value
    values.update(config_mod.steps_over_epochs(values, sets))
    cfg = config_mod.from_dict(values)
    preset = str(state.get("preset", "custom"))
    return store, preset, cfg, state, path


def start(cfg: Config | None, preset: str, *, runs_dir: Path = Path("runs"),
          name: str | None = None, device: str = "auto", resume: Path | None = None,
          sets: list[str] | tuple[str, ...] = (), on_nonfinite: str = "stop",
          queue_size: int = 10_000) -> Session:
    """Set up a run (new, or resumed from ``resume``) and start its trainer thread.

    Args:
        cfg: the configuration of a new run (ignored when resuming).
        preset: the preset name, for the record.
        runs_dir: parent of new run directories.
        name: run directory name; default ``<preset>-<timestamp>``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        resume: a run directory to continue from its newest valid checkpoint.
        sets: ``KEY=VALUE`` overrides applied on resume (see :data:`RESUME_KEYS`).
        on_nonfinite: ``stop`` or ``pause`` when a loss goes NaN/inf.
    """
    torch_device = resolve_device(device)
    queue = ev.EventQueue(queue_size)
    notes: list[ev.Event] = []

    def warn(message: str) -> None:
        notes.append(ev.Alert(0, "data", message))

    resume_state = None
    if resume is not None:
        store, preset, cfg, resume_state, ckpt = prepare_resume(resume, sets, warn=warn)
        run_name = store.path.name
        notes.append(ev.Note(int(resume_state["step"]),
                             f"resuming from {ckpt} at step {resume_state['step']}"))
    else:
        assert cfg is not None
        run_name = name or default_run_name(runs_dir, preset)
        store = RunStore.create(runs_dir, run_name, cfg.to_dict() | {"preset": preset})
    controller = Controller()
    trainer = Trainer(cfg, store=store, emit=queue.put, controller=controller,
                      device=torch_device, preset=preset, name=run_name,
                      resume_state=resume_state, on_nonfinite=on_nonfinite, notes=notes)
    server = ControlServer(store.path, controller, status=trainer.status,
                           refuse=lambda message: controller.journal("control", message))
    server.start()
    store.write_owner({"preset": preset, "device": str(torch_device)})
    session = Session(trainer, controller, queue, store.path, threading.Thread(), server)
    session.thread = threading.Thread(target=_run, args=(session,), name="gantui-trainer",
                                      daemon=True)
    session.thread.start()
    return session


def _run(session: Session) -> None:
    try:
        session.trainer.run()
    except BaseException as exc:  # reported to the consumer; the thread must not die silently
        session.error.append(exc)
    finally:
        session.server.close()
