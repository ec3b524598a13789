"""DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training",
2020): random colour, translation and cutout applied to every batch the discriminator sees,
real and generated alike, as differentiable tensor operations so G's gradient flows through.

A transcription of the authors' ``DiffAugment_pytorch.py`` (mit-han-lab/data-efficient-gans)
with one change: every random draw comes from the generator passed in (the trainer's noise
generator, saved in checkpoints), so a resumed run augments exactly as the uninterrupted one.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from gantui.config import DIFFAUG, Config

TRANSLATION_RATIO = 0.125
"""Largest shift, as a fraction of the image side."""
CUTOUT_RATIO = 0.5
"""Side of the cut-out square, as a fraction of the image side."""


def diff_augment(x: torch.Tensor, policy: Iterable[str], gen: torch.Generator) -> torch.Tensor:
    """``x`` (N, C, H, W) augmented by each named augmentation, in :data:`DIFFAUG` order.

    Args:
        x: a batch of images in [-1, 1].
        policy: names from :data:`gantui.config.DIFFAUG`; empty returns ``x`` itself.
        gen: the random generator for every draw (on ``x``'s device).
    """
    names = set(policy)
    if not names:
        return x
    unknown = names - set(DIFFAUG)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)[0]!r}")
    if "color" in names:
        x = brightness(x, gen)
        x = saturation(x, gen)
        x = contrast(x, gen)
    if "translation" in names:
        x = translation(x, gen)
    if "cutout" in names:
        x = cutout(x, gen)
    return x


def perturb(x: torch.Tensor, cfg: Config, step: int, total: int,
            gen: torch.Generator) -> torch.Tensor:
    """What D sees of a real or generated batch at ``step`` of ``total``: DiffAugment
    (``cfg.diffaug``), then N(0, sigma^2) instance noise with sigma annealed from
    ``cfg.instance_noise`` to 0; every draw from ``gen``, in that order (the trainer and the
    bench's bare loop share it, so both draw alike)."""
    x = diff_augment(x, cfg.diffaug, gen)
    if not cfg.instance_noise:
        return x
    sigma = cfg.instance_noise * max(0.0, 1.0 - step / total)
    if sigma == 0:
        return x
    return x + sigma * torch.randn(x.shape, device=x.device, generator=gen, dtype=x.dtype)


def _uniform(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One U(0, 1) value per image, shaped (N, 1, 1, 1)."""
    return torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device, dtype=x.dtype)


def brightness(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Add one value from U(-0.5, 0.5) to each image."""
    return x + (_uniform(x, gen) - 0.5)


def saturation(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Scale each image's distance from its per-pixel channel mean by U(0, 2) (no change to
    a one-channel image)."""
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean) * (_uniform(x, gen) * 2) + mean


def contrast(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Scale each image's distance from its mean by U(0.5, 1.5)."""
    mean = x.mean(dim=[1, 2, 3], keepdim=True)
    return (x - mean) * (_uniform(x, gen) + 0.5) + mean


def translation(x: torch.Tensor, gen: torch.Generator,
                ratio: float = TRANSLATION_RATIO) -> torch.Tensor:
    """Shift each image by up to ``ratio`` of its side each way, filling with zeros."""
    n, _, h, w = x.shape
    shift_h, shift_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-shift_h, shift_h + 1, (n, 1, 1), generator=gen, device=x.device)
    dx = torch.randint(-shift_w, shift_w + 1, (n, 1, 1), generator=gen, device=x.device)
    batch, rows, cols = torch.meshgrid(torch.arange(n, device=x.device),
                                       torch.arange(h, device=x.device),
                                       torch.arange(w, device=x.device), indexing="ij")
    rows = torch.clamp(rows + dy + 1, 0, h + 1)
    cols = torch.clamp(cols + dx + 1, 0, w + 1)
    padded = F.pad(x, [1, 1, 1, 1])
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, gen: torch.Generator, ratio: float = CUTOUT_RATIO) -> torch.Tensor:
    """Zero one square of ``ratio`` of the side per image, centred anywhere in it."""
    n, _, h, w = x.shape
    size_h, size_w = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h + (1 - size_h % 2), (n, 1, 1), generator=gen, device=x.device)
    left = torch.randint(0, w + (1 - size_w % 2), (n, 1, 1), generator=gen, device=x.device)
    batch, rows, cols = torch.meshgrid(torch.arange(n, device=x.device),
                                       torch.arange(size_h, device=x.device),
                                       torch.arange(size_w, device=x.device), indexing="ij")
    rows = torch.clamp(rows + top - size_h // 2, 0, h - 1)
    cols = torch.clamp(cols + left - size_w // 2, 0, w - 1)
    mask = torch.ones(n, h, w, dtype=x.dtype, device=x.device)
    mask[batch, rows, cols] = 0
    return x * mask.unsqueeze(1)
