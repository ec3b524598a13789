"""DiffAugment (Zhao et al., "Differentiable Augmentation for Data-Efficient GAN Training",
2020): random colour, translation and cutout applied to every batch the discriminator sees,
real and generated alike, as differentiable tensor operations so G's gradient flows through.

A transcription of the authors' ``DiffAugment_pytorch.py`` (mit-han-lab/data-efficient-gans)
with one change: every random draw comes from the generator passed in (the trainer's noise
generator, saved in checkpoints), so a resumed run augments exactly as the uninterrupted one.

Each augmentation can also be applied to a share of the images only (``diffaug_p``), and that
share can follow D's overfitting (``ada_target``, :class:`AugmentChance`): the adaptive
augmentation of Karras et al., "Training Generative Adversarial Networks with Limited Data",
2020, here driving DiffAugment's differentiable augmentations.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F

from gantui.config import DIFFAUG, Config

TRANSLATION_RATIO = 0.125
"""Largest shift, as a fraction of the image side."""
CUTOUT_RATIO = 0.5
"""Side of the cut-out square, as a fraction of the image side."""
ADA_INTERVAL = 4
"""D steps between adjustments of the adaptive chance (as StyleGAN2-ADA)."""
ADA_IMAGES = 100_000
"""Real images over which the adaptive chance can move by at most 1 (StyleGAN2-ADA: 500,000,
for runs of tens of millions of images; these runs see about a million)."""


def diff_augment(x: torch.Tensor, policy: Iterable[str], gen: torch.Generator,
                 p: float = 1.0) -> torch.Tensor:
    """``x`` (N, C, H, W) augmented by each named augmentation, in :data:`DIFFAUG` order.

    Args:
        x: a batch of images in [-1, 1].
        policy: names from :data:`gantui.config.DIFFAUG`; empty returns ``x`` itself.
        gen: the random generator for every draw (on ``x``'s device).
        p: the chance that an augmentation is applied to an image, drawn per image and
            augmentation; at 1 every image is augmented and nothing more is drawn (so a run
            draws as it did before the chance existed), at 0 nothing is drawn.
    """
    names = set(policy)
    if not names or p <= 0:
        return x
    unknown = names - set(DIFFAUG)
    if unknown:
        raise ValueError(f"unknown augmentation {sorted(unknown)[0]!r}")
    for name in DIFFAUG:
        if name not in names:
            continue
        if p >= 1:
            x = AUGMENTATIONS[name](x, gen)
        else:
            # drawn in float32: a bf16 U(0, 1) (a fake under autocast) is too coarse for the
            # small chances adaptation starts from, and reals and fakes must share the chance
            chosen = torch.rand(x.shape[0], 1, 1, 1, generator=gen, device=x.device) < p
            x = torch.where(chosen, AUGMENTATIONS[name](x, gen), x)
    return x


def perturb(x: torch.Tensor, cfg: Config, step: int, total: int,
            gen: torch.Generator, p: float = 1.0) -> torch.Tensor:
    """What D sees of a real or generated batch at ``step`` of ``total``: DiffAugment
    (``cfg.diffaug``, each augmentation with chance ``p``: :meth:`AugmentChance.p`), then
    N(0, sigma^2) instance noise with sigma annealed from ``cfg.instance_noise`` to 0; every
    draw from ``gen``, in that order (the trainer and the bench's bare loop share it, so both
    draw alike)."""
    x = diff_augment(x, cfg.diffaug, gen, p)
    if not cfg.instance_noise:
        return x
    sigma = cfg.instance_noise * max(0.0, 1.0 - step / total)
    if sigma == 0:
        return x
    return x + sigma * torch.randn(x.shape, device=x.device, generator=gen, dtype=x.dtype)


class AugmentChance:
    """The chance :func:`perturb` applies each augmentation with: ``cfg.diffaug_p``, or while
    ``cfg.ada_target`` is on, a chance adapted to D's overfitting.

    Adaptive: every :data:`ADA_INTERVAL` D steps, ``r_t``, the mean of sign(D(x) - threshold)
    over those steps' real batches (summed over the ranks, so every rank holds the same
    chance), is compared with the target, and the chance moves up (over it) or down (under
    it) by the real images seen over :data:`ADA_IMAGES`, kept in [0, 1]. The signs add up
    on the device; one host read per adjustment. The chance and the signs since the last
    adjustment are saved in checkpoints, so a resumed run augments as the uninterrupted one.
    """

    def __init__(self, threshold: float, device: torch.device,
                 total: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> None:
        """``threshold``: D's output above which it calls an input real
        (:func:`gantui.quality.diagnostics.real_threshold`); ``total``: sums a tensor over
        the ranks (the identity on one)."""
        self.threshold = threshold
        self.total = total
        self.adapted = 0.0
        """The adaptive chance (0 until ``ada_target`` moves it)."""
        self._sum = torch.zeros((), device=device)  # signs since the last adjustment
        self._count = 0  # real images since the last adjustment (this rank's)
        self._batches = 0

    def p(self, cfg: Config) -> float:
        """The chance in use under ``cfg``."""
        return self.adapted if cfg.ada_target else cfg.diffaug_p

    def observe(self, out_real: torch.Tensor, cfg: Config) -> None:
        """Count one batch of D's raw outputs on (augmented) real images; adjust the chance
        every :data:`ADA_INTERVAL` batches. Nothing while ``ada_target`` is off."""
        if not cfg.ada_target or not cfg.diffaug:
            if self._count:  # switched off mid-interval: switched on, it counts afresh
                self._sum.zero_()
                self._count = self._batches = 0
            return
        self._sum += torch.sign(out_real.detach().float() - self.threshold).sum()
        self._count += out_real.numel()
        self._batches += 1
        if self._batches % ADA_INTERVAL:
            return
        packed = torch.stack([self._sum, self._sum.new_tensor(float(self._count))])
        total, images = self.total(packed).tolist()
        self._sum.zero_()
        self._count = 0
        if images:
            r_t, move = total / images, images / ADA_IMAGES
            if r_t > cfg.ada_target:
                self.adapted = min(1.0, self.adapted + move)
            elif r_t < cfg.ada_target:
                self.adapted = max(0.0, self.adapted - move)

    def state_dict(self) -> dict[str, Any]:
        return {"adapted": self.adapted, "sum": float(self._sum), "count": self._count,
                "batches": self._batches}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        """Restore :meth:`state_dict`; None (a checkpoint from before the chance was saved)
        starts from 0."""
        state = state if isinstance(state, dict) else {}
        self.adapted = float(state.get("adapted", 0.0))
        self._sum = torch.tensor(float(state.get("sum", 0.0)), device=self._sum.device)
        self._count = int(state.get("count", 0))
        self._batches = int(state.get("batches", 0))


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


def colour(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """DiffAugment's ``color``: brightness, saturation, then contrast."""
    return contrast(saturation(brightness(x, gen), gen), gen)


AUGMENTATIONS: dict[str, Callable[[torch.Tensor, torch.Generator], torch.Tensor]] = {
    "color": colour, "translation": translation, "cutout": cutout}
"""Each name of :data:`gantui.config.DIFFAUG` and what it does to a batch."""
