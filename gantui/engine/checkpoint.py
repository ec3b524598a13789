"""What a checkpoint holds and how it is taken from and put back into a trainer.

One declared list, :data:`FIELDS`: each field of the checkpoint dict with how to capture it
from a :class:`~gantui.engine.trainer.Trainer` and how to restore it. :func:`save` and
:func:`load` walk that list, so they cannot drift apart; the run store's reader contract
(``CHECKPOINT_KEYS``, the field types, ``CHECKPOINT_VERSION``) is checked against it when this
module is imported. Changing what a field means is a new :data:`VERSION`.

Also here: how a failed checkpoint write is worded (the file, the cause, the free space and the
checkpoint that is kept) and the warning when the disk is about to fill.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gantui import events as ev
from gantui.data.sources import MixtureBatches, StackedBatches
from gantui.errors import GantuiError
from gantui.files import free_bytes
from gantui.models import user as user_model
from gantui.run.store import _FIELD_TYPES, CHECKPOINT_KEYS, CHECKPOINT_VERSION

if TYPE_CHECKING:
    from gantui.engine.trainer import Trainer

VERSION = CHECKPOINT_VERSION
"""The checkpoint layout this module writes and reads; the store refuses any other."""

FULL = (errno.ENOSPC, errno.EDQUOT)
"""Write failures that mean the disk (or the user's quota) is full."""

ROOM_FOR = 3
"""Warn when the free space holds fewer than this many more checkpoints."""


@dataclass(frozen=True)
class Field:
    """One entry of the checkpoint dict."""

    name: str
    """Its key in the checkpoint dict."""
    capture: Callable[[Trainer], Any] | None
    """Its value, taken from a trainer; None for a field added by the writer of a special
    checkpoint (``ranks``, ``best``)."""
    restore: Callable[[Trainer, Any, dict[str, Any]], None] | None
    """Puts ``(trainer, value, whole state)`` back, in list order; None when the field is read
    elsewhere (the session rebuilds the config from ``config``, the store checks ``version``,
    another field's restore reads it)."""
    doc: str
    """What it is, for a reader of this list."""


def _optional(module: torch.nn.Module | torch.optim.Optimizer | None) -> Any:
    return None if module is None else module.state_dict()


def _cpu(tensor: torch.Tensor | None) -> torch.Tensor | None:
    return None if tensor is None else tensor.cpu()


def _set_step(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
    trainer.step = int(value)


def _load_into(attribute: str) -> Callable[[Trainer, Any, dict[str, Any]], None]:
    def restore(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
        getattr(trainer, attribute).load_state_dict(value)
    return restore


def _restore_rank(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
    mine = rank_state_from(trainer, state)
    torch.set_rng_state(mine["rng"]["torch"])
    if trainer.device.type == "cuda" and mine["rng"]["cuda"]:
        torch.cuda.set_rng_state_all(mine["rng"]["cuda"])
    if mine["rng"].get("noise") is not None:
        trainer.noise.set_state(mine["rng"]["noise"])
    trainer.batches.load_state_dict(mine["data"])
    trainer.augment.load_state_dict(mine.get("augment"))


def _restore_fixed_noise(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
    trainer.previews.fixed_noise = value.to(trainer.device)


def _restore_fixed_labels(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
    trainer.previews.fixed_labels = None if value is None else value.to(trainer.device)


def _restore_ema(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
    if trainer.G_ema is not None:  # absent (ema switched on at this resume): start from G
        trainer.G_ema.load_state_dict(value if isinstance(value, dict)
                                      else trainer.G.state_dict())


def _restore_encoder(attribute: str) -> Callable[[Trainer, Any, dict[str, Any]], None]:
    def restore(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
        if trainer.E is not None and trainer.opt_e is not None:  # encoder is fixed by config
            if attribute == "fixed_real":
                trainer.previews.fixed_real = value.to(trainer.device)
            else:
                getattr(trainer, attribute).load_state_dict(value)
    return restore


def _restore_reader(attribute: str) -> Callable[[Trainer, Any, dict[str, Any]], None]:
    def restore(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
        if trainer.Q is not None and trainer.opt_q is not None:  # fixed by config (info_codes,
            # ac_weight on or off)
            getattr(trainer, attribute).load_state_dict(value)
    return restore


def _precision(trainer: Trainer) -> str:
    return "bfloat16" if trainer.amp else "float32"


def _restore_precision(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
    """A note when the training steps now run in another precision than they were saved in
    (``amp`` on a machine with native bfloat16, resumed on one without, or the reverse)."""
    now = _precision(trainer)
    if isinstance(value, str) and value != now and trainer.world.main:
        trainer.add_note(ev.Alert(int(state["step"]), "control", (
            f"the checkpoint's steps ran in {value} and this machine runs them in {now}: "
            f"training continues, but no longer exactly as it would have in {value}")))


def _capture_quality(trainer: Trainer) -> dict[str, Any]:
    evaluation = trainer.evaluation
    return {**evaluation.tracker.state_dict(), "overfit": evaluation.overfit.state_dict()}


def _restore_quality(trainer: Trainer, value: Any, state: dict[str, Any]) -> None:
    if isinstance(value, dict):
        trainer.evaluation.tracker.load_state_dict(value)
        trainer.evaluation.overfit.load_state_dict(value.get("overfit"))


FIELDS: tuple[Field, ...] = (
    Field("version", lambda t: VERSION, None, "the layout; the store refuses another"),
    Field("step", lambda t: t.step, _set_step, "steps completed"),
    Field("config", lambda t: t.cfg.to_dict(), None,
          "the config as a table; the session rebuilds the run's config from it"),
    Field("preset", lambda t: t.preset, None, "the preset's name, for the record"),
    Field("G", lambda t: t.G.state_dict(), _load_into("G"), "the generator's weights"),
    Field("D", lambda t: t.D.state_dict(), _load_into("D"), "the discriminator's weights"),
    Field("opt_g", lambda t: t.opt_g.state_dict(), _load_into("opt_g"), "G's Adam state"),
    Field("opt_d", lambda t: t.opt_d.state_dict(), _load_into("opt_d"), "D's Adam state"),
    Field("rng", lambda t: rng_state(t), _restore_rank,
          "rank 0's RNG streams; restores this rank's streams and data position from rng, "
          "data, world_size and ranks"),
    Field("world_size", lambda t: t.world.size, None, "ranks that wrote it (read with rng)"),
    Field("data", lambda t: t.batches.state_dict(), None,
          "rank 0's data position (read with rng)"),
    Field("ranks", None, None, "every rank's rng and data, when several ranks wrote it (read "
          "with rng)"),
    Field("fixed_noise", lambda t: t.previews.fixed_noise.cpu(), _restore_fixed_noise,
          "the noise behind every preview"),
    Field("fixed_labels", lambda t: _cpu(t.previews.fixed_labels), _restore_fixed_labels,
          "the labels behind every preview (conditional), else None"),
    Field("G_ema", lambda t: None if t.G_ema is None else t.G_eval.state_dict(), _restore_ema,
          "the moving average of G (ema > 0), with batch-norm statistics of its own, else "
          "None"),
    Field("E", lambda t: _optional(t.E), _restore_encoder("E"), "the encoder (cVAE-GAN)"),
    Field("opt_e", lambda t: _optional(t.opt_e), _restore_encoder("opt_e"), "E's Adam state"),
    Field("Q", lambda t: _optional(t.Q), _restore_reader("Q"),
          "InfoGAN's Q (info_codes) or AC-GAN's classifier (ac_weight)"),
    Field("opt_q", lambda t: _optional(t.opt_q), _restore_reader("opt_q"), "Q's Adam state"),
    Field("fixed_real", lambda t: _cpu(t.previews.fixed_real), _restore_encoder("fixed_real"),
          "one real digit per class shown beside its reconstruction (cVAE-GAN)"),
    Field("quality", _capture_quality, _restore_quality,
          "the quality tracker (best and latest score, warnings given) and the D-overfitting "
          "streak"),
    Field("augment", lambda t: t.augment.state_dict(), None,
          "rank 0's adaptive augmentation chance and its signs since the last adjustment "
          "(ada_target; read with rng, each rank its own signs from ranks); absent before it "
          "was saved: the chance starts from 0"),
    Field("precision", _precision, _restore_precision,
          "what the training steps ran in, bfloat16 (amp where native) or float32: a resume "
          "in the other says it is no longer exact; absent before it was saved"),
    Field("model_source", lambda t: user_model.built_digest(t.cfg), None,
          "sha256 of a user's model file (\"\" for the built-in models): a resume warns "
          "when the file changed (read by the session and run/restore)"),
    Field("best", None, None, "in best.pt only: the metric and step that made it best"),
)


def save(trainer: Trainer) -> dict[str, Any]:
    """Everything needed to continue ``trainer`` exactly: one dict of tensors and plain
    values, one entry per captured field of :data:`FIELDS`."""
    return {f.name: f.capture(trainer) for f in FIELDS if f.capture is not None}


def load(trainer: Trainer, state: dict[str, Any]) -> None:
    """Put ``state`` (a checkpoint the store loaded and checked) back into ``trainer``, whose
    config was already rebuilt from it: each field's restore in list order, then the live
    learning rates and betas over the optimizers' saved ones.

    Raises:
        GantuiError: a checkpoint of another version, or one this launch cannot continue.
    """
    if state.get("version") != VERSION:
        raise GantuiError(f"the checkpoint has version {state.get('version')!r}; this gantui "
                          f"reads {VERSION}")
    for f in FIELDS:
        if f.restore is not None:
            f.restore(trainer, state.get(f.name), state)
    trainer.apply_optimizer_settings()


def rng_state(trainer: Trainer) -> dict[str, Any]:
    """This process's RNG streams: torch's, CUDA's and the trainer's noise generator."""
    cuda_rng = torch.cuda.get_rng_state_all() if trainer.device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda_rng,
            "noise": trainer.noise.get_state()}


def rank_state(trainer: Trainer) -> dict[str, Any]:
    """What differs between ranks: RNG streams, the data position and the adaptive
    augmentation's signs since its last adjustment (an entry of ``ranks``)."""
    return {"rng": rng_state(trainer), "data": trainer.batches.state_dict(),
            "augment": trainer.augment.state_dict()}


def rank_state_from(trainer: Trainer, state: dict[str, Any]) -> dict[str, Any]:
    """This rank's RNG streams, data position and augmentation signs from ``state``: its own
    when the checkpoint was written by as many ranks, else rank 0's data position and
    augmentation chance with fresh per-rank noise and no signs counted yet (continuing, but
    no longer exactly; a note says so)."""
    world = trainer.world
    saved = int(state.get("world_size", 1))
    ranks = state.get("ranks")
    if saved == world.size:
        if saved == 1:
            return {"rng": state["rng"], "data": state["data"], "augment": state.get("augment")}
        if isinstance(ranks, list) and len(ranks) == saved:
            return ranks[world.rank]
    if trainer.cfg.epochs > 0:
        raise GantuiError(f"this run counts epochs, and an epoch is a different number of "
                          f"steps on {world.size} rank(s) than on {saved}: resume on "
                          f"{saved}, or give its length in steps (--set steps=N)")
    if world.main:
        trainer.add_note(ev.Alert(int(state["step"]), "control", f"resuming {saved} rank(s)' "
                                  f"checkpoint on {world.size}: training continues, but "
                                  f"no longer exactly as it would have on {saved}"))
    data = dict(state["data"])
    batches = trainer.batches
    if isinstance(batches, (MixtureBatches, StackedBatches)) or "index" not in data:
        fresh = batches.state_dict()  # a fresh stream for this rank
        if "clusters" in data:  # on the split the run began with
            fresh["clusters"] = data["clusters"]
        data = fresh
    elif batches.steps_per_epoch and int(data["index"]) >= batches.steps_per_epoch:
        data.update(epoch=int(data["epoch"]) + 1, index=0)  # shorter epochs per rank now
    seed = trainer.cfg.seed + 1 + 7919 * world.rank + 104_729 * int(state["step"])
    noise = torch.Generator(device=trainer.device).manual_seed(seed).get_state()
    augment = state.get("augment")
    if isinstance(augment, dict):  # the chance carries on; the signs were another split's
        augment = dict(augment, sum=0.0, count=0)
    return {"rng": dict(state["rng"], noise=noise), "data": data, "augment": augment}


# ---- when writing fails ------------------------------------------------------------------

def disk_full(exc: OSError) -> bool:
    """True when ``exc`` says the disk or the quota is full."""
    return exc.errno in FULL


def shown_path(path: str | Path | None, run_dir: Path) -> str:
    """``path`` relative to the run directory when inside it (``checkpoints/ckpt-…pt``)."""
    if path is None:
        return "none yet"
    try:
        return str(Path(path).relative_to(run_dir))
    except ValueError:
        return str(path)


def megabytes(n: int | None) -> str:
    """``0.4 MB``; ``? MB`` when unknown."""
    return "? MB" if n is None else f"{n / 1e6:.1f} MB"


def write_failure(exc: OSError, run_dir: Path, what: str | Path | None = None) -> str:
    """``No space left on device while writing checkpoints/ckpt-00000300.pt (0.4 MB free)``:
    the cause, the file (``exc.filename``, else ``what``) and the free space left."""
    cause = exc.strerror or str(exc) or type(exc).__name__
    target = shown_path(exc.filename or what, run_dir) if (exc.filename or what) else "a file"
    return f"{cause} while writing {target} ({megabytes(free_bytes(run_dir))} free)"


class DiskWatch:
    """Warns once when the free space next to the checkpoints falls below :data:`ROOM_FOR`
    checkpoints' size, and again only after it has risen above it."""

    def __init__(self) -> None:
        self.low = False

    def after_checkpoint(self, path: Path, run_dir: Path) -> str | None:
        """The warning to give after writing ``path``, or None."""
        try:
            size = path.stat().st_size
        except OSError:
            return None
        free = free_bytes(path.parent)
        if free is None:
            return None
        low = free < ROOM_FOR * size
        warn = low and not self.low
        self.low = low
        if not warn:
            return None
        room = free // max(size, 1)
        return (f"{megabytes(free)} free on the disk of {run_dir}: room for {room} more "
                f"checkpoint(s) of {megabytes(size)}; free some space before it fills (the run "
                f"then pauses in the dashboard, or stops headless, with its checkpoints kept)")


class Checkpoints:
    """The checkpoint room of a trainer: periodic, requested, final and crash checkpoints,
    written atomically by rank 0 with every rank's RNG streams and data position, and what
    happens when one cannot be written (a full disk pauses the dashboard's run, stops a
    headless one; any other failure is a warning)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self._disk = DiskWatch()

    def write(self, reason: str) -> Path | None:
        """Write a checkpoint atomically, unless the weights went bad (then keep the last).

        Raises:
            OSError: the write failed (on every rank); the earlier checkpoints stay whole.
        """
        t = self.t
        if not t.params_finite():
            t.emit(ev.Alert(t.step, "nonfinite", "checkpoint skipped: the weights are not "
                            f"finite; the last good checkpoint is kept "
                            f"({t.last_good_checkpoint or 'none yet'})"))
            return None
        previous = t.state
        t.set_state("checkpointing", reason, journal=False)
        try:
            path = self._write_all_ranks()
        except OSError:
            t.set_state(previous, journal=False)
            raise
        t.last_good_checkpoint = path
        t.emit(ev.Checkpointed(t.step, str(path), reason))
        t.set_state(previous, journal=False)
        low = self._disk.after_checkpoint(path, t.store.path) if t.world.main else None
        if low is not None:
            t.emit(ev.Alert(t.step, "disk", low))
        return path

    def _write_all_ranks(self) -> Path:
        """Every rank's RNG and data position into rank 0's checkpoint (a collective: every
        rank calls it at the same step); every rank learns whether the write worked."""
        t = self.t
        states = t.channel.gather(rank_state(t))
        outcome: dict[str, Any] | None = None
        if t.world.main:
            state = save(t)
            if t.world.distributed:
                state["ranks"] = states
            try:
                outcome = {"path": str(t.store.save_checkpoint(
                    state, t.cfg.keep_checkpoints, warn=self._note))}
            except OSError as exc:
                outcome = {"errno": exc.errno or 0, "error": exc.strerror or str(exc),
                           "file": exc.filename}
        outcome = t.channel.broadcast(outcome)
        if "error" in outcome:
            raise OSError(outcome["errno"], outcome["error"], outcome.get("file"))
        return Path(outcome["path"])

    def _note(self, message: str) -> None:
        self.t.emit(ev.Alert(self.t.step, "data", message))

    def periodic(self) -> None:
        """A scheduled checkpoint. Failing to write one is a warning and training goes on,
        except on a full disk: the dashboard's run pauses until the user makes room (then
        ``c`` writes it, or resuming tries again), a headless run stops with the resume line.
        The earlier checkpoints stay whole either way."""
        t = self.t
        while True:
            try:
                self.write("periodic")
                return
            except OSError as exc:
                message = self.failure(exc)
                if not disk_full(exc):
                    t.emit(ev.Alert(t.step, "error", f"{message}; training continues"))
                    return
            if t.on_nonfinite != "pause":  # headless: stop, and say how to go on
                t.write_failure = message
                t.stopping = True
                t.emit(ev.Alert(t.step, "error", f"{message}; stopping"))
                return
            t.emit(ev.Alert(t.step, "error", f"{message}; paused: free some space, then "
                            f"press c to checkpoint or p to resume"))
            t.paused = True  # as for a non-finite loss in the dashboard
            t.set_state("paused", "disk full")
            t.commands.wait_while_paused()
            if t.stopping or step_of(t.last_good_checkpoint) == t.step:
                return  # stopped, or `c` wrote it while paused; else try again

    def final(self, state: str) -> Path | None:
        """The checkpoint a finished or stopped run ends with (unless this step has one); a
        failure is recorded in ``write_failure`` and the earlier checkpoints stay."""
        t = self.t
        path = t.last_good_checkpoint
        if t.write_failure is None and step_of(path) != t.step:
            try:
                path = self.write("final" if state == "finished" else "stop")
            except OSError as exc:  # a full disk: the earlier checkpoints stay whole
                t.write_failure = self.failure(exc)
                t.emit(ev.Alert(t.step, "error", t.write_failure))
        return path

    def after_crash(self) -> None:
        """After a crash between steps (logging, sampling), keep the completed step. A crash
        inside a step leaves D updated and G not: that state is not a resume point, so the
        last checkpoint stays the newest. On several ranks it would need every rank, and one
        may be gone."""
        t = self.t
        if t.mid_step or step_of(t.last_good_checkpoint) == t.step or t.world.distributed:
            return
        self.write("crash")

    def failure(self, exc: OSError) -> str:
        """``<cause> while writing <file> (<N> MB free); the last good checkpoint is …``."""
        t = self.t
        last = t.last_good_checkpoint
        kept = ("there is no checkpoint yet" if last is None else
                f"the last good checkpoint is {shown_path(last, t.store.path)}")
        return (f"{write_failure(exc, t.store.path, f'checkpoints/ckpt-{t.step:08d}.pt')}; "
                f"{kept}")


def step_of(path: Path | None) -> int | None:
    """The step of ``checkpoints/ckpt-<step>.pt`` (None for none)."""
    return None if path is None else int(path.stem.split("-")[1])


def _check_against_the_store() -> None:
    """The store's reader contract and :data:`FIELDS` must describe one layout."""
    names = [f.name for f in FIELDS]
    captured = {f.name for f in FIELDS if f.capture is not None}
    problems = [f"{key} is required by the store but never saved" for key in CHECKPOINT_KEYS
                if key not in captured]
    problems += [f"{key} is typed by the store but not a field" for key in _FIELD_TYPES
                 if key not in names]
    if len(set(names)) != len(names):
        problems.append("a field is declared twice")
    if problems:
        raise ImportError("gantui.engine.checkpoint and gantui.run.store disagree: "
                          + "; ".join(problems))


_check_against_the_store()
