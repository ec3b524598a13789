"""The run directory: boring and strict.

```
runs/<name>/
  config.toml        resolved config at the start (live changes are in events.jsonl)
  metrics.jsonl      one object per log interval, flushed per write
  events.jsonl       lifecycle and control journal: {"event": ..., "step": ..., ...}
  samples/           full-resolution PNG grids, step-numbered
  checkpoints/       ckpt-00001000.pt ... written atomically, the last few of its own kept
  run.json           who is running it: pid, host, start time (for `gantui runs`)
```
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gantui.config import to_toml
from gantui.errors import GantuiError
from gantui.files import (
    as_int,
    atomic_write_bytes,
    fsync_dir,
    naming,
    parse_record,
    read_bytes,
    read_json_dict,
    read_jsonl,
)
from gantui.text import safe

if TYPE_CHECKING:  # torch loads when a checkpoint or an image is written or read, so a
    import torch  # gantui.api script that logs plain numbers starts without it

CHECKPOINT_VERSION = 1
CHECKPOINT_KEYS = ("version", "step", "config", "G", "D", "opt_g", "opt_d", "rng", "data",
                   "fixed_noise")
_CKPT_RE = re.compile(r"^ckpt-(\d{8,})\.pt$")
BEST_NAME = "best.pt"


class StoreError(GantuiError):
    """A run directory that cannot be created, read or resumed."""


class CorruptCheckpoint(StoreError):
    """A checkpoint file that cannot be unpickled at all (torn, truncated, foreign)."""


class JsonlWriter:
    """Append-only JSON lines, each record written straight to the file (no buffer).

    A file left ending mid-line (its writer was killed during a write) is first terminated
    with a newline, so the torn record stays a lone unreadable line that readers skip, and
    the first new record is not glued to it. A record that cannot be written whole (a full
    disk) is cut off again, so the file stays as it was.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fh = open(path, "a+b", buffering=0)
        except OSError as exc:
            raise naming(exc, path) from None
        size = self._fh.seek(0, os.SEEK_END)
        if size:
            self._fh.seek(size - 1)
            torn = self._fh.read(1) != b"\n"
            self._fh.seek(0, os.SEEK_END)
            if torn:
                self._append(b"\n")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line.

        Raises:
            OSError: naming the file; nothing of the record is left in it.
        """
        line = json.dumps(record, separators=(",", ":"), default=_json_default) + "\n"
        self._append(line.encode())

    def _append(self, data: bytes) -> None:
        end = os.fstat(self._fh.fileno()).st_size
        try:
            view = memoryview(data)
            while view:  # one write as a rule: a reader sees a line whole or torn, once
                view = view[self._fh.write(view):]
        except OSError as exc:
            with contextlib.suppress(OSError):
                self._fh.truncate(end)  # a partial line would glue onto the next one
            raise naming(exc, self.path) from None

    def close(self) -> None:
        self._fh.close()


def _json_default(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def run_names(name: str) -> Iterator[str]:
    """The names a run called ``name`` may take, in order: ``name``, ``name-2``, ``name-3``..."""
    yield name
    n = 2
    while True:
        yield f"{name}-{n}"
        n += 1


def free_run_name(runs_dir: Path, name: str) -> str:
    """The first of :func:`run_names` not taken under ``runs_dir`` (for a launcher that must
    name the directory before the process that creates it starts)."""
    return next(c for c in run_names(name) if not (runs_dir / c).exists())


def default_run_name(preset: str) -> str:
    """``<preset>-YYYYmmdd-HHMMSS`` (:meth:`RunStore.create` adds ``-2``... if taken)."""
    return f"{preset}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.samples = path / "samples"
        self.checkpoints = path / "checkpoints"
        self._metrics: JsonlWriter | None = None
        self._events: JsonlWriter | None = None
        self._events_lock = threading.Lock()
        self._sealed = False
        self._quality: JsonlWriter | None = None
        self._own: set[str] = set()
        """Names of the checkpoints this run wrote (see :meth:`claim_checkpoints`): the only
        ones :meth:`save_checkpoint` may replace or prune."""

    # ---- creation ------------------------------------------------------------------------

    @classmethod
    def create(cls, runs_dir: Path, name: str, config: dict[str, Any],
               unique: bool = False) -> RunStore:
        """Claim a new run directory atomically (``mkdir``); never reuses one that holds a run.

        Args:
            unique: on a name already taken, try ``name-2``, ``name-3``... instead of failing.
        """
        if not name or "/" in name or name in (".", ".."):
            raise StoreError(f"invalid run name {name!r}")
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create runs directory {runs_dir}: {exc.strerror}") \
                from None
        for candidate in run_names(name):
            path = runs_dir / candidate
            try:
                path.mkdir()
                break
            except FileExistsError:
                if unique:
                    continue
                if (path / "config.toml").exists():
                    raise StoreError(f"run {path} already exists; resume it with --resume "
                                     f"{path} or pick another --name") from None
                raise StoreError(f"{path} already exists and is not a gantui run; pick "
                                 f"another --name") from None
            except OSError as exc:
                raise StoreError(f"cannot create run directory {path}: {exc.strerror}") \
                    from None
        store = cls(path)
        store._make_dirs()
        atomic_write_bytes(path / "config.toml", to_toml(config).encode())
        return store

    def remove_unused(self) -> None:
        """Delete a run directory that a failed start created and nothing was written to."""
        if self.checkpoint_paths() or (self.path / "metrics.jsonl").exists():
            return
        shutil.rmtree(self.path, ignore_errors=True)

    def supersede_after(self, step: int, name: str = "metrics.jsonl") -> int:
        """On resume: move the records of journal ``name`` past ``step`` (written after the
        checkpoint by a run that then crashed) to ``<stem>-superseded.jsonl``, so the journal
        counts steps up once more. Unreadable lines go with them: nothing is deleted.
        Returns how many records moved."""
        path = self.path / name
        try:
            lines = read_bytes(path).split(b"\n")
        except OSError:
            return 0
        keep, move, moved = [], [], 0
        for line in lines:
            if not line.strip():
                continue
            record = parse_record(line)
            if record is not None and (as_int(record.get("step")) or 0) <= step:
                keep.append(line)
            else:
                move.append(line)
                moved += record is not None
        if not move:
            return 0
        aside = self.path / f"{path.stem}-superseded.jsonl"
        with open(aside, "ab") as fh:
            fh.write(b"".join(line + b"\n" for line in move))
            fh.flush()
            os.fsync(fh.fileno())
        atomic_write_bytes(path, b"".join(line + b"\n" for line in keep))
        return moved

    @classmethod
    def open(cls, path: Path) -> RunStore:
        """Open an existing run directory (for resume, watch, ctl)."""
        if not path.is_dir():
            raise StoreError(f"no run directory at {path}")
        if not (path / "config.toml").is_file():
            raise StoreError(f"{path} is not a gantui run (no config.toml)")
        store = cls(path)
        store._make_dirs()
        return store

    def _make_dirs(self) -> None:
        for folder in (self.samples, self.checkpoints):
            try:
                folder.mkdir(exist_ok=True)
            except FileExistsError:
                raise StoreError(f"{folder} exists but is not a directory; move it aside") \
                    from None
            except OSError as exc:
                raise StoreError(f"cannot create {folder}: {exc.strerror or exc}") from None

    def check_journals(self) -> None:
        """Before training into this directory: its journals must be regular files (or
        absent), so a run never starts only to crash at its first log.

        Raises:
            StoreError: ``metrics.jsonl`` or ``events.jsonl`` is a directory or similar.
        """
        for name in ("metrics.jsonl", "events.jsonl", "quality.jsonl"):
            path = self.path / name
            if path.exists() and not path.is_file():
                raise StoreError(f"{path} exists but is not a regular file; move it aside")

    def remove_stale_temp_files(self) -> list[Path]:
        """Delete half-written temp files (``.NAME.tmp-PID``) whose writer is gone: a
        ``kill -9`` during a save leaves them. Only for the run's owner (it holds the lock, so
        no other process writes checkpoints). Returns what was removed."""
        removed = []
        for folder in (self.path, self.checkpoints, self.samples):
            for tmp in folder.glob(".*.tmp-*"):
                pid = _int_or_none(tmp.name.rpartition(".tmp-")[2])
                if pid is None or pid == os.getpid() or (_pid_alive(pid)
                                                         and folder != self.checkpoints):
                    continue
                try:
                    tmp.unlink()
                except OSError:
                    continue
                removed.append(tmp)
        return removed

    def write_owner(self, info: dict[str, Any]) -> None:
        """Record which process is running this run (``run.json``)."""
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        record.update(info)
        atomic_write_bytes(self.path / "run.json", json.dumps(record, indent=1).encode())

    def owner(self) -> dict[str, Any]:
        """The contents of ``run.json``, or {} if absent or unreadable."""
        return read_json_dict(self.path / "run.json")

    # ---- journals ------------------------------------------------------------------------

    def append_metrics(self, record: dict[str, Any]) -> None:
        """Append one metrics record to ``metrics.jsonl``."""
        if self._metrics is None:
            self._metrics = JsonlWriter(self.path / "metrics.jsonl")
        self._metrics.write(record)

    def append_event(self, record: dict[str, Any]) -> None:
        """Append one lifecycle/control record to ``events.jsonl`` (nothing after
        :meth:`last_event`)."""
        with self._events_lock:
            self._write_event(record)

    def last_event(self, record: dict[str, Any]) -> None:
        """Append ``record`` as the journal's last line: this process is quitting while its
        trainer may still be mid-step, and whatever the trainer would journal after it (a
        checkpoint finished, an error from the half-written one removed) is dropped. Waits at
        most a second for a journal write under way (a disk that hangs must not hold up a
        quit), then writes anyway."""
        held = self._events_lock.acquire(timeout=1.0)
        try:
            self._write_event(record)
        finally:
            self._sealed = True
            if held:
                self._events_lock.release()

    def _write_event(self, record: dict[str, Any]) -> None:
        if self._sealed:
            return
        if self._events is None:
            self._events = JsonlWriter(self.path / "events.jsonl")
        self._events.write(record)

    def append_quality(self, record: dict[str, Any]) -> None:
        """Append one evaluation to ``quality.jsonl``."""
        if self._quality is None:
            self._quality = JsonlWriter(self.path / "quality.jsonl")
        self._quality.write(record)

    def quality(self) -> list[dict[str, Any]]:
        """Every evaluation so far."""
        return read_jsonl(self.path / "quality.jsonl")

    def metrics(self) -> list[dict[str, Any]]:
        """Every metrics record so far."""
        return read_jsonl(self.path / "metrics.jsonl")

    def events(self) -> list[dict[str, Any]]:
        """Every journal record so far."""
        return read_jsonl(self.path / "events.jsonl")

    def close(self) -> None:
        """Close the journal files."""
        for writer in (self._metrics, self._events, self._quality):
            if writer is not None:
                writer.close()
        self._metrics = self._events = self._quality = None

    # ---- samples -------------------------------------------------------------------------

    def save_grid(self, step: int, grid: torch.Tensor, name: str | None = None) -> Path:
        """Save a (C, H, W) float grid in [0, 1] as ``samples/step-XXXXXXXX.png``."""
        return save_png(grid, self.samples / (name or f"step-{step:08d}.png"))

    # ---- checkpoints ---------------------------------------------------------------------

    def checkpoint_paths(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        found = [p for p in self.checkpoints.glob("ckpt-*.pt") if _CKPT_RE.match(p.name)]
        return sorted(found, key=lambda p: int(_CKPT_RE.match(p.name).group(1)))

    def discard_partial(self) -> None:
        """Remove this process's half-written checkpoint, if it is quitting mid-save."""
        for tmp in self.checkpoints.glob(f".*.pt.tmp-{os.getpid()}"):
            tmp.unlink(missing_ok=True)

    def claim_checkpoints(self, resumed: Path) -> None:
        """On resume (by the run's owner): the checkpoints this run wrote are ``resumed`` and
        the older ones its journal records writing. Newer files were refused by the resume
        (another run's, another version's) and the unrecorded ones may be anyone's: they are
        never pruned, and one in the way of a new checkpoint is moved aside first."""
        mine = {resumed.name}
        limit = _step_of(resumed.name)
        for record in self.events():
            name = Path(str(record.get("path", ""))).name if record.get("event") == \
                "checkpoint" else ""
            step = _step_of(name)
            if step is not None and limit is not None and step <= limit:
                mine.add(name)
        self._own = mine

    def save_checkpoint(self, state: dict[str, Any], keep: int, warn=None) -> Path:
        """Write ``state`` atomically as ``ckpt-<step>.pt`` and prune this run's own
        checkpoints to the newest ``keep``; a file of that name the run did not write is first
        moved aside (``ckpt-<step>.pt.foreign``), and ``warn`` is told where.

        Raises:
            OSError: naming the checkpoint (a full disk: the earlier checkpoints stay whole).
        """
        missing = [k for k in CHECKPOINT_KEYS if k not in state]
        if missing:
            raise StoreError(f"checkpoint state lacks {', '.join(missing)}")
        path = self.checkpoints / f"ckpt-{state['step']:08d}.pt"
        if path.name not in self._own and (path.exists() or path.is_symlink()):
            aside = _free_name(path, ".foreign")
            try:
                path.rename(aside)
            except OSError as exc:
                raise naming(exc, path) from None
            if warn is not None:
                warn(f"{path.name} was not written by this run (a resume could not use it); "
                     f"moved it aside to {aside.name} before writing this run's checkpoint")
        _atomic_torch_save(state, path)
        self._own.add(path.name)
        own = [p for p in self.checkpoint_paths() if p.name in self._own]
        for old in own[:-keep]:
            if old != path:  # never the one just written, whatever its number
                old.unlink(missing_ok=True)
                self._own.discard(old.name)
        return path

    def save_written(self, step: int, write, keep: int) -> Path:
        """A checkpoint written by a user's own script (:mod:`gantui.api`): ``write(path)``
        fills a temp file, which becomes ``ckpt-<step>.pt`` atomically (fsync, rename); then
        prune to the newest ``keep``.

        Raises:
            StoreError: ``write`` left no file at the path it was given.
        """
        path = self.checkpoints / f"ckpt-{step:08d}.pt"
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            write(tmp)
            if not tmp.is_file():
                raise StoreError(f"the save function wrote nothing to the path it was given "
                                 f"({tmp}); it must write the checkpoint there")
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # a failed save leaves no debris
        fsync_dir(path.parent)
        for old in self.checkpoint_paths()[:-keep]:
            if old != path:
                old.unlink(missing_ok=True)
        return path

    @property
    def best_path(self) -> Path:
        """``checkpoints/best.pt``: the best model by the quality metric, never pruned."""
        return self.checkpoints / BEST_NAME

    def best_record(self) -> dict[str, Any]:
        """The ``best`` entry of ``best.pt`` (step, metric, value, values); {} when there is
        no usable best checkpoint."""
        try:
            state = load_checkpoint_file(self.best_path)
        except StoreError:
            return {}
        best = state.get("best")
        return best if isinstance(best, dict) else {}

    def save_best(self, state: dict[str, Any]) -> Path:
        """Write ``state`` (a checkpoint with a ``best`` entry) atomically as ``best.pt``."""
        if not isinstance(state.get("best"), dict):
            raise StoreError("a best checkpoint records its metric and step under 'best'")
        _atomic_torch_save(state, self.best_path)
        return self.best_path

    def load_checkpoint(self, warn=None, quarantine: bool = False,
                        check=None) -> tuple[Path, dict[str, Any]]:
        """The newest checkpoint that loads; broken newer ones are reported through ``warn``.

        Args:
            quarantine: rename corrupt (unreadable) newer files to ``*.bad`` so they leave the
                rotation; only for the process that owns the run (resume). Files of another
                version or layout are never renamed.
            check: called with each loaded candidate; a :class:`StoreError` from it (the
                checkpoint belongs to another run, its shapes do not fit) skips to an older one.

        Raises:
            StoreError: no checkpoint loads.
        """
        paths = self.checkpoint_paths()
        if not paths:
            raise StoreError(f"{self.path} has no checkpoints to resume from")
        reasons: list[str] = []
        for path in reversed(paths):
            try:
                state = load_checkpoint_file(path, check)
            except StoreError as exc:
                reasons.append(str(exc))
                where = ""
                if quarantine and isinstance(exc, CorruptCheckpoint):
                    aside = path.with_name(path.name + ".bad")
                    try:
                        path.rename(aside)  # kept for inspection, out of the rotation
                        where = f" (moved aside as {aside.name})"
                    except OSError:
                        where = " (left in place)"
                if warn is not None:
                    warn(f"{exc}{where}; falling back to an older checkpoint")
                continue
            return path, state
        more = f" (and {len(reasons) - 1} older)" if len(reasons) > 1 else ""
        raise StoreError(f"no loadable checkpoint in {self.checkpoints}: {reasons[0]}{more}")


def _step_of(name: str) -> int | None:
    match = _CKPT_RE.match(name)
    return int(match.group(1)) if match else None


def _free_name(path: Path, suffix: str) -> Path:
    """``path`` + ``suffix`` (then ``-2``, ``-3``...): a name no file and no checkpoint has."""
    candidate, n = path.with_name(path.name + suffix), 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.name}{suffix}-{n}")
    return candidate


class _Recorder:
    """A file object that remembers the OSError behind a failed write: torch's zip writer
    turns it into ``RuntimeError: [enforce fail at inline_container.cc] unexpected pos``."""

    def __init__(self, fh) -> None:
        self.fh = fh
        self.error: OSError | None = None

    def write(self, data) -> int:
        try:
            return self.fh.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.fh.flush()


def _atomic_torch_save(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temp file, fsync and rename.

    Raises:
        OSError: naming ``path`` with the cause (a full disk); no temp file is left.
    """
    import torch

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    recorder: _Recorder | None = None
    try:
        with open(tmp, "wb") as fh:
            recorder = _Recorder(fh)
            torch.save(state, recorder)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise naming(exc, path) from None
    except RuntimeError:
        if recorder is not None and recorder.error is not None:
            raise naming(recorder.error, path) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # a failed save (full disk) leaves no debris
    fsync_dir(path.parent)


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() and len(text) < 12 else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def save_png(grid: torch.Tensor, path: Path) -> Path:
    """Write a (C, H, W) float image in [0, 1] as a PNG (grey or RGB), atomically."""
    import io

    import torch
    from PIL import Image

    array = grid.mul(255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).cpu()
    array = array.squeeze(2) if array.shape[2] == 1 else array
    png = io.BytesIO()
    Image.fromarray(array.numpy()).save(png, format="PNG")
    atomic_write_bytes(path, png.getvalue())  # an OSError names path; nothing is left
    return path


def load_checkpoint_file(path: Path, check=None) -> dict[str, Any]:
    """Load one checkpoint with ``weights_only=True`` and check its keys, version and the
    types of its fields; then ``check(state)`` if given (see :meth:`RunStore.load_checkpoint`).

    Raises:
        CorruptCheckpoint: the file does not unpickle.
        StoreError: it is not a checkpoint this gantui can use.
    """
    import torch

    name = safe(path.name, 80)
    try:
        if not path.is_file():
            why = "not a file" if path.exists() else "no such file"
            raise StoreError(f"checkpoint {safe(path)} is unreadable ({why})")
        state = torch.load(path, map_location="cpu", weights_only=True)
    except StoreError:
        raise
    except Exception as exc:  # torch raises many types for a torn or foreign file
        raise CorruptCheckpoint(f"checkpoint {name} is unreadable "
                                f"({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise StoreError(f"checkpoint {name} is not a gantui checkpoint")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise StoreError(f"checkpoint {name} lacks {', '.join(missing)}")
    if state["version"] != CHECKPOINT_VERSION:
        raise StoreError(f"checkpoint {name} has version {safe(state['version'], 20)}, "
                         f"this gantui reads {CHECKPOINT_VERSION}")
    wrong = [key for key, kind in _FIELD_TYPES.items()
             if not isinstance(state[key], torch.Tensor if kind == "Tensor" else kind)]
    if as_int(state["step"]) is None or state["step"] < 0:
        wrong.insert(0, "step")
    if wrong:
        raise StoreError(f"checkpoint {name} is malformed (wrong type of {', '.join(wrong)})")
    if check is not None:
        try:
            check(state)
        except StoreError as exc:
            raise StoreError(f"checkpoint {name} cannot be used: {exc}") from None
    return state


_FIELD_TYPES = {"config": dict, "G": dict, "D": dict, "opt_g": dict, "opt_d": dict,
                "rng": dict, "data": dict, "fixed_noise": "Tensor"}
"""The type of each checkpoint field; ``"Tensor"``: a ``torch.Tensor``."""
