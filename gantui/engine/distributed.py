"""Data-parallel training on PyTorch's own engine: torchrun, process groups, DDP.

A run launched by ``torchrun`` (or ``gantui train --nproc-per-node N``, which starts it) is
one run: rank 0 owns the run directory, its lock, ``control.sock``, the journal, metrics,
previews, evaluation and checkpoints; the other ranks train and write nothing there.

Between steps the ranks talk over a CPU (gloo) *control group*, so steering never makes a
CUDA rank wait for its device:

* :meth:`Channel.exchange` carries rank 0's commands (set, pause, checkpoint, stop...) to
  every rank at the same step, and any rank's stop request (a SIGTERM) to all of them;
* :meth:`Channel.gather` and :meth:`Channel.broadcast` collect every rank's RNG and data
  position into rank 0's checkpoint and hand out the setup (config, resumed state) at start.

Gradients and the per-interval metrics go through the default group (NCCL on CUDA, gloo on
the CPU): DDP all-reduces gradients; :meth:`Trainer.log` all-reduces the statistics.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from gantui.data.sources import Shard
from gantui.engine.control import Command
from gantui.errors import GantuiError

DEFAULT_TIMEOUT_S = 1800
"""How long a collective may wait for the slowest rank (rank 0 evaluating or writing a
checkpoint while the others wait); ``GANTUI_DIST_TIMEOUT`` (seconds) overrides it."""


@dataclass(frozen=True)
class World:
    """This process's place in a launch: global ``rank`` of ``size``, ``local_rank`` on its
    node. ``World()`` is a plain single-process run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """True on rank 0, the rank that owns the run directory."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """True when there is more than one rank."""
        return self.size > 1

    @property
    def shard(self) -> Shard:
        """This rank's part of every epoch."""
        return Shard(self.rank, self.size)


SINGLE = World()


def launched() -> World:
    """The launch this process is part of, from the variables torchrun sets.

    Raises:
        GantuiError: the variables are there but make no sense.
    """
    if "WORLD_SIZE" not in os.environ:
        return SINGLE
    try:
        world = World(int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"]),
                      int(os.environ.get("LOCAL_RANK", "0")))
    except ValueError:
        raise GantuiError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (they are set by "
                          "torchrun)") from None
    if world.size < 1 or not 0 <= world.rank < world.size or world.local_rank < 0:
        raise GantuiError(f"rank {world.rank} of world size {world.size} is not a valid launch")
    return world


def timeout() -> timedelta:
    """The collective timeout: ``GANTUI_DIST_TIMEOUT`` seconds, else 30 minutes."""
    raw = os.environ.get("GANTUI_DIST_TIMEOUT", "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise GantuiError(f"GANTUI_DIST_TIMEOUT={raw!r}: expected seconds") from None
    if seconds <= 0:
        raise GantuiError(f"GANTUI_DIST_TIMEOUT={raw!r}: expected seconds > 0")
    return timedelta(seconds=seconds)


def device_for(world: World, spec: str) -> torch.device:
    """One device per local rank: ``cuda:LOCAL_RANK`` on CUDA, else the CPU.

    Raises:
        GantuiError: CUDA asked for and absent, or fewer GPUs than local ranks.
    """
    spec = spec.strip().lower()
    if spec not in ("auto", "cpu", "cuda"):
        raise GantuiError(f"--device {spec!r}: a torchrun launch takes auto, cpu or cuda (each "
                          f"rank uses cuda:LOCAL_RANK)")
    if spec == "cpu" or (spec == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise GantuiError("--device cuda: no CUDA device is available here")
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise GantuiError(f"local rank {world.local_rank} has no GPU: this node has {count}; "
                          f"use --nproc-per-node {count} or fewer")
    return torch.device("cuda", world.local_rank)


SYNC_EVERY = 4
"""On several ranks, steps between two command exchanges (and stop checks): a command lands
on every rank at the same step, at most this many steps after it arrived."""
PAUSED_POLL_S = 0.2
"""While paused on several ranks, rank 0 waits this long for a command between exchanges:
the ranks keep meeting, so no collective ever waits near its timeout."""


class Channel:
    """The ranks' control channel between steps, on a CPU (gloo) process group."""

    sync_every = SYNC_EVERY
    paused_poll_s = PAUSED_POLL_S

    def __init__(self, world: World, group: Any = None) -> None:
        self.world = world
        self.group = group
        self.setup_sent = False

    def share(self, commands: list[Command], stop: bool) -> tuple[list[Command], bool]:
        """Rank 0's ``commands`` on every rank (the others pass none), and whether any rank
        asked to stop."""
        payload = encode([(c.action, c.changes, c.source) for c in commands])
        payload, stop_any = self.exchange(payload if self.world.main else b"", stop)
        if self.world.main:
            return commands, stop_any
        return [Command(action, changes, source)
                for action, changes, source in decode(payload)], stop_any

    def average(self, stats: torch.Tensor, counts: list[float]) -> tuple[list[float],
                                                                         list[float]]:
        """Per-interval statistics averaged over the ranks and ``counts`` summed (on the
        training group: NCCL on CUDA)."""
        packed = torch.cat([stats, torch.tensor(counts, dtype=torch.float32,
                                                device=stats.device)])
        dist.all_reduce(packed)
        values = packed.tolist()
        n = len(counts)
        return [v / self.world.size for v in values[:-n]], values[-n:]

    def total(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the ranks (on the training group, in place)."""
        dist.all_reduce(values)
        return values

    def exchange(self, payload: bytes, stop: bool) -> tuple[bytes, bool]:
        """Rank 0's ``payload`` on every rank, and whether any rank asked to stop."""
        head = torch.tensor([len(payload) if self.world.main else 0, int(stop)],
                            dtype=torch.int64)
        dist.all_reduce(head, op=dist.ReduceOp.MAX, group=self.group)
        size, stop_any = head.tolist()
        if size:
            if self.world.main:
                buf = torch.frombuffer(bytearray(payload), dtype=torch.uint8)
            else:
                buf = torch.empty(size, dtype=torch.uint8)
            dist.broadcast(buf, src=0, group=self.group)
            payload = buf.numpy().tobytes()
        return payload, bool(stop_any)

    def gather(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj``, in rank order, on rank 0 (None elsewhere)."""
        out: list[Any] | None = [None] * self.world.size if self.world.main else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def broadcast(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def spread(self, value: int) -> tuple[int, int]:
        """The smallest and largest ``value`` over the ranks."""
        both = torch.tensor([value, -value], dtype=torch.int64)
        dist.all_reduce(both, op=dist.ReduceOp.MAX, group=self.group)
        high, neg_low = both.tolist()
        return -neg_low, high

    def send_setup(self, setup: dict[str, Any]) -> dict[str, Any]:
        """Rank 0 hands the run's setup (or the error that ended it) to the other ranks."""
        self.setup_sent = True
        return self.broadcast(setup)

    def agree(self, error: BaseException | None) -> None:
        """A barrier every rank passes only if all of them got this far without ``error``.

        Raises:
            the rank's own ``error``, unless rank 0 failed too (the same data or model
            refused on every rank: rank 0 alone says why); on the others, a
            :class:`RankFailed`.
        """
        flag = torch.tensor([0 if error is None else self.world.rank + 1,
                             int(error is not None and self.world.main)], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=self.group)
        failed, main_failed = flag.tolist()
        if error is not None and (self.world.main or not main_failed):
            raise error
        if failed:
            who = 0 if main_failed else failed - 1
            raise RankFailed(f"rank {who} could not start (its message says why)")


class LocalChannel:
    """The channel of a single process, a do-nothing stand-in for :class:`Channel`: every
    exchange is with itself, so the trainer has one code path for one rank or many."""

    sync_every = 1
    """Commands apply at every step."""
    paused_poll_s = 0.1

    def share(self, commands: list[Command], stop: bool) -> tuple[list[Command], bool]:
        return commands, stop

    def average(self, stats: torch.Tensor, counts: list[float]) -> tuple[list[float],
                                                                         list[float]]:
        return stats.tolist(), counts

    def total(self, values: torch.Tensor) -> torch.Tensor:
        return values

    def gather(self, obj: Any) -> list[Any]:
        return [obj]

    def broadcast(self, obj: Any = None) -> Any:
        return obj

    def spread(self, value: int) -> tuple[int, int]:
        return value, value

    def agree(self, error: BaseException | None) -> None:
        if error is not None:
            raise error


class RankFailed(GantuiError):
    """Another rank failed; this one ends quietly (that rank reports why)."""


def encode(commands: list[tuple[str, dict[str, Any], str]]) -> bytes:
    """Commands as ``(action, changes, source)`` in JSON (typed live values are plain)."""
    return json.dumps(commands).encode() if commands else b""


def decode(payload: bytes) -> list[tuple[str, dict[str, Any], str]]:
    return [tuple(item) for item in json.loads(payload)] if payload else []


def init(world: World, device_spec: str) -> tuple[torch.device, Channel]:
    """Join the launch's process group (NCCL for CUDA, gloo for the CPU) and open the
    control channel; returns this rank's device and the channel."""
    device = device_for(world, device_spec)
    wait = timeout()
    if device.type == "cuda":
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", timeout=wait, device_id=device)
        group = dist.new_group(backend="gloo", timeout=wait)
    else:
        dist.init_process_group("gloo", timeout=wait)
        group = None  # the default group is gloo already
    return device, Channel(world, group)


def close() -> None:
    """Leave the process group (quietly: a dead peer must not turn an exit into a hang)."""
    if dist.is_available() and dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass


def wrap(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` in its own DistributedDataParallel. Buffers are not broadcast at each
    forward: D runs twice (real, fake) before its backward, and BatchNorm's running
    statistics change in place in each forward."""
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # newer torch renamed the option (buffers still start equal: synced once at init)
    newer = "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters
    option = {"forward_sync_buffers": False} if newer else {"broadcast_buffers": False}
    return DistributedDataParallel(module, device_ids=ids, **option)


def is_peer_failure(exc: BaseException) -> bool:
    """True for the errors a collective raises when another rank died or hung."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        mark in text for mark in ("Connection closed by peer", "Connection reset", "gloo",
                                  "NCCL", "Timed out", "timed out"))
