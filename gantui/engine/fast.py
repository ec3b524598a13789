"""Speed options shared by the trainer and the bare loop of ``gantui bench``.

Each option only changes how the same arithmetic runs: ``tf32`` and ``channels_last`` on
CUDA, ``amp`` (bfloat16 autocast) where the GPU or CPU computes bfloat16 natively, ``compile``
(``torch.compile`` of the forward passes) anywhere. The modules themselves
(their parameters, state dicts and checkpoints) are untouched; the trainer calls the
returned forwards in its steps and the plain modules everywhere else.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from collections.abc import Callable
from typing import NamedTuple

import torch

from gantui.config import Config
from gantui.engine import distributed
from gantui.engine.distributed import SINGLE, World
from gantui.models.builtin import build_models
from gantui.system import available_cores


def set_backend_flags(cfg: Config, device: torch.device) -> None:
    """TF32 for CUDA matmuls and cuDNN convolutions, as ``cfg.tf32`` says."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
        torch.backends.cudnn.allow_tf32 = cfg.tf32
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest kernels once


def uses_channels_last(cfg: Config, device: torch.device) -> bool:
    """NHWC applies to the convolutional models on CUDA only, and not under ``compile``:
    inductor picks convolution layouts itself, and NHWC weights given to it failed its own
    stride check in the backward of G's first transposed convolution (torch 2.11 on an
    H200, 2026-12-04)."""
    return (cfg.channels_last and not cfg.compile and cfg.arch == "dcgan"
            and device.type == "cuda")


_X86 = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


def _x86() -> bool:
    """Whether this machine is x86, whose bfloat16 instructions are AVX512-BF16 and AMX
    (elsewhere: Arm's BF16 extension)."""
    return platform.machine().lower() in _X86


@functools.cache
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively: AVX512-BF16 or AMX on x86, the BF16
    extension (as oneDNN reports it) on Arm. Without, autocast emulates it and runs slower
    than float32. oneDNN's own answer is no test on x86: it is true for any AVX-512 CPU."""
    try:
        if _x86():
            return bool(torch.cpu._is_avx512_bf16_supported()
                        or torch.cpu._is_amx_tile_supported())
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without them
        return False


@functools.cache
def gpu_capability(index: int | None) -> tuple[int, int] | None:
    """A CUDA device's compute capability; None where it cannot be read."""
    try:
        return tuple(torch.cuda.get_device_capability(index))  # type: ignore[return-value]
    except (AssertionError, RuntimeError):  # no driver, or a build without CUDA
        return None


def uses_amp(cfg: Config, device: torch.device) -> bool:
    """bfloat16 autocast of the training steps (``amp``) where the device computes bfloat16
    natively: a GPU of compute capability 8.0 (Ampere) or newer, a CPU with bfloat16
    instructions. On such a CPU the convolutions run in oneDNN's bfloat16 kernels: a
    dcgan-mnist step (G and D forward and backward, batch 128, one thread) took 67-72 ms
    against 112-122 ms in float32 (AVX512-BF16, 2026-12-07). Elsewhere it would be emulated,
    slower than float32."""
    if not cfg.amp:
        return False
    if device.type == "cuda":
        return (gpu_capability(device.index) or (0, 0)) >= (8, 0)
    return device.type == "cpu" and cpu_has_bf16()


def autocast(on: bool, device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The context the training steps' forward passes run in: bfloat16 autocast when ``on``
    (:func:`uses_amp`), else nothing. Losses are taken in float32 either way."""
    if on:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def speed_notes(cfg: Config, device: torch.device) -> list[str]:
    """What a run says of its speed options: one it was given and does not use, and that it
    trains in bfloat16."""
    notes = []
    if cfg.channels_last and cfg.compile and cfg.arch == "dcgan" and device.type == "cuda":
        notes.append("channels_last is not applied with compile: torch.compile picks the "
                     "convolution layouts itself")
    if uses_amp(cfg, device):
        notes.append("amp: the training steps run in bfloat16 (weights, losses, previews and "
                     "evaluation in float32)")
    elif cfg.amp and device.type == "cpu":
        which = "AVX512-BF16 or AMX" if _x86() else "the BF16 extension"
        notes.append(f"amp is not applied: this CPU has no bfloat16 instructions ({which}), "
                     "where float32 is faster; training runs in float32")
    elif cfg.amp and device.type == "cuda":
        capability = gpu_capability(device.index)
        which = f"compute capability {capability[0]}.{capability[1]}" if capability else (
            "its compute capability unread")
        notes.append(f"amp is not applied: this GPU has no native bfloat16 ({which}; it "
                     "needs 8.0, Ampere, or newer), where float32 is faster; training runs "
                     "in float32")
    return notes


def to_memory_format(module: torch.nn.Module, cfg: Config, device: torch.device) -> None:
    """Move ``module``'s 4-D weights to NHWC when ``channels_last`` applies (in place)."""
    if uses_channels_last(cfg, device):
        module.to(memory_format=torch.channels_last)


def input_format(cfg: Config, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """What real batches go through before D: NHWC when ``channels_last`` applies."""
    if uses_channels_last(cfg, device):
        return lambda x: x.contiguous(memory_format=torch.channels_last)
    return lambda x: x


def forward(module: torch.nn.Module, cfg: Config) -> Callable[..., torch.Tensor]:
    """``module`` itself, or its ``torch.compile``\\ d forward when ``cfg.compile``."""
    if cfg.compile:
        return torch.compile(module)
    return module


def set_threads(cfg: Config) -> str:
    """Apply ``cfg.threads`` to torch (process-wide); returns the note saying what was set.

    ``threads = 0`` keeps torch's own choice unless it exceeds the cores this process may use
    (torch counts the machine's cores, not a container's quota or a ``taskset``).
    """
    cores = available_cores()
    current = torch.get_num_threads()
    if _handed_over and current == 1:  # one because hand_over_threads left it so, not the caller
        current = _handed_over[-1]
    threads = cfg.threads or min(current, cores)
    if threads != torch.get_num_threads():
        torch.set_num_threads(threads)
    why = "the threads key" if cfg.threads else f"auto, {cores} core(s) available"
    over = (f"; more than the {cores} core(s) available: expect contention"
            if threads > cores else "")
    return f"CPU threads: {threads} ({why}){over}"


_handed_over: list[int] = []
"""The count the main thread had before :func:`hand_over_threads` left it one."""


def hand_over_threads() -> int:
    """Leave this (the main) thread one intra-op thread and return the count the trainer
    thread is to set for itself.

    OpenMP keeps a thread team per thread that runs parallel work. Once the main thread has
    built the models and checked a batch with N threads, its team lingers beside the trainer
    thread's own; on a machine with no spare cores the two teams' workers share them and
    every parallel region of the training step waits longer for its workers (measured here:
    the trainer thread 20-30% slower than the same steps in one thread). A main thread kept
    at one thread never forms a team.
    """
    threads = torch.get_num_threads()
    if threads > 1:
        _handed_over[:] = [threads]
        torch.set_num_threads(1)
    return threads


class TrainingModels(NamedTuple):
    """G and D as the training steps call them."""

    G: torch.nn.Module
    """The generator itself: state dicts, previews, evaluation, EMA."""
    D: torch.nn.Module
    """The discriminator itself."""
    input: Callable[[torch.Tensor], torch.Tensor]
    """What real batches go through before D (NHWC when ``channels_last`` applies)."""
    G_step: Callable[..., torch.Tensor]
    """G's forward in the steps: compiled when ``compile``, in DDP on several ranks."""
    D_step: Callable[..., torch.Tensor]
    """D's forward in the D step."""
    D_frozen: Callable[..., torch.Tensor]
    """D's forward in the G step, where D is frozen: never through DDP, whose reducer would
    wait for gradients D does not get."""
    D_eager: Callable[..., torch.Tensor]
    """D's forward for R1 (differentiated twice: never compiled; in DDP on several ranks)."""


def training_models(cfg: Config, device: torch.device, world: World = SINGLE,
                    agree: Callable[[BaseException | None], None] | None = None
                    ) -> TrainingModels:
    """Seed, build and place G and D with every speed option applied, as the trainer and the
    bench's bare loop both need them; on several ranks each in its own DDP.

    Args:
        agree: on several ranks, the channel's :meth:`~gantui.engine.distributed.Channel.agree`:
            called once every rank has built its models (or failed to: a user's model that
            does not import or fails its dry batch), before DDP's first collective.
    """
    torch.manual_seed(cfg.seed)
    error: BaseException | None = None
    try:
        G, D = build_models(cfg)
    except BaseException as exc:  # noqa: BLE001 - raised by agree() on this rank
        if agree is None:
            raise
        error = exc
    if agree is not None:
        agree(error)
    if world.distributed and cfg.sync_bn and device.type == "cuda":
        G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = torch.nn.SyncBatchNorm.convert_sync_batchnorm(D)
    G.to(device)
    D.to(device)
    set_backend_flags(cfg, device)
    for module in (G, D):
        to_memory_format(module, cfg, device)
    if not world.distributed:
        g, d = forward(G, cfg), forward(D, cfg)
        return TrainingModels(G, D, input_format(cfg, device), g, d, d, D)
    G_ddp, D_ddp = distributed.wrap(G, device), distributed.wrap(D, device)
    return TrainingModels(G, D, input_format(cfg, device), forward(G_ddp, cfg),
                          forward(D_ddp, cfg), forward(D, cfg), D_ddp)
