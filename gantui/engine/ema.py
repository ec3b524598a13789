"""The moving average of G (``ema`` > 0), and the batch-norm statistics it is shown with.

An average of G's weights is a different network from G, so G's batch-norm running
statistics do not fit it: its activations have other means and variances. Copying G's
statistics (as gantui did, and as many training scripts do) leaves the averaged G
normalising with the wrong numbers in eval mode. Before the averaged G is shown, scored or
saved, :func:`calibrate` recomputes its statistics from its own activations on fresh noise
("standing statistics", as BigGAN does), once per step at most. Measured on MNIST at 8,000
steps (seed 0): ``judge_fd`` 0.958 -> 0.902 (``dcgan-mnist``) and 0.581 -> 0.562
(``cdcgan-mnist``) from the same averaged weights.

The noise comes from a generator seeded by the run's seed and the step, never from the
training streams, so calibrating changes nothing a resume must reproduce.
"""

from __future__ import annotations

import copy

import torch

from gantui.config import Config
from gantui.models.latent import training_noise

CALIBRATION_SAMPLES = 1024
"""Samples drawn (in training-size batches) to recompute the statistics; 8,192 gave
``judge_fd`` within 0.002 of it in the measurements above."""


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` to average into: eval mode, no gradients."""
    copied = copy.deepcopy(module).eval()
    copied.requires_grad_(False)
    return copied


@torch.no_grad()
def update(average: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """One step of the average: weights move ``1 - decay`` of the way to ``model``'s;
    buffers (batch-norm statistics) are copied until :func:`calibrate` replaces them."""
    torch._foreach_lerp_(list(average.parameters()), list(model.parameters()), 1.0 - decay)
    for mine, theirs in zip(average.buffers(), model.buffers(), strict=True):
        mine.copy_(theirs)


def norms(module: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    """``module``'s batch-norm layers that keep running statistics (those eval mode uses).
    Synchronised ones (``sync_bn`` on several GPUs) are left out: in train mode they would
    wait for ranks that are not calibrating, so such a G keeps G's copied statistics."""
    return [m for m in module.modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats
            and not isinstance(m, torch.nn.SyncBatchNorm)]


@torch.no_grad()
def calibrate(average: torch.nn.Module, cfg: Config, step: int,
              device: torch.device | str) -> None:
    """Recompute ``average``'s batch-norm running statistics as the plain mean over
    :data:`CALIBRATION_SAMPLES` samples of training noise; it is left in eval mode. A
    generator without batch norm is left as it is."""
    layers = norms(average)
    if not layers:
        return
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over the calibration batches
    gen = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + 7 * step + 5)
    batch = max(2, cfg.batch_size)
    average.train()
    try:
        for _ in range(max(1, CALIBRATION_SAMPLES // batch)):
            z, y = training_noise(cfg, batch, gen, device)
            average(z, y)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        average.eval()
