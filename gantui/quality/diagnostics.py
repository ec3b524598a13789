"""Diagnostics that say why a GAN goes wrong, computed at evaluation time.

* D overfitting: the ADA heuristic ``r_t = E[sign(D(x_real))]`` over the training batches
  since the last evaluation (:class:`RealSigns`), and D's accuracy on held-out real digits
  against its accuracy on training digits (:func:`d_accuracy`). :class:`OverfitMonitor` warns
  when the gap lasts.
* Memorisation: how close generated samples come to their nearest training image in the
  judge's feature space, against how close held-out real images come (:func:`memorisation`).
* Mode dropping by class: the share of samples the judge puts in each class
  (:func:`class_shares`), recorded at every evaluation so a vanishing class shows over time.
* Legibility: the share of samples the judge reads with confidence (:func:`legible`), against
  held-out real images: low when G draws digits nobody could name, which FD and the class
  shares alone do not tell apart from a G that draws good digits of the wrong classes.

Pure functions of tensors and modules; nothing here knows the trainer or the UI.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, NamedTuple

import torch
from torch import nn

from gantui.quality.describe import STRIP_COLUMNS

OVERFIT_GAP = 0.15
"""D's accuracy on training digits above its accuracy on held-out ones by more than this..."""
OVERFIT_PATIENCE = 2
"""...for this many evaluations in a row raises the ``overfit`` warning."""
OFFENDERS = STRIP_COLUMNS
"""Near-copies shown beside their nearest training images."""
LEGIBLE = 0.9
"""A sample is legible when the judge gives its top class at least this probability."""


def real_threshold(loss: str) -> float:
    """D's output above which it calls an input real: 0 for logit and hinge losses, 0.5 for
    LSGAN (whose outputs are regressed towards 1 for real and 0 for fake)."""
    return 0.5 if loss == "lsgan" else 0.0


class RealSigns:
    """The running sum of ``sign(D(x_real) - threshold)`` over training batches, on the device
    (no host sync per step); :meth:`take` reads and restarts it."""

    def __init__(self, threshold: float = 0.0) -> None:
        self.threshold = threshold
        self._sum: torch.Tensor | None = None
        self._count = 0

    def add(self, out_real: torch.Tensor) -> None:
        """Add one batch of D's raw outputs on real data."""
        signs = torch.sign(out_real.detach().float() - self.threshold).sum()
        self._sum = signs if self._sum is None else self._sum + signs
        self._count += out_real.numel()

    def take(self) -> float:
        """``r_t``: the mean sign since the last call (-1..1; NaN when nothing was seen)."""
        if self._sum is None or not self._count:
            return math.nan
        value = float(self._sum) / self._count
        self._sum, self._count = None, 0
        return value


def _chunks(images: torch.Tensor, labels: torch.Tensor | None, size: int
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
    for i in range(0, len(images), size):
        yield images[i:i + size], None if labels is None else labels[i:i + size]


@torch.no_grad()
def d_accuracy(D: nn.Module, images: torch.Tensor, labels: torch.Tensor | None, *,
               threshold: float = 0.0, batch_size: int = 64,
               device: torch.device | str = "cpu") -> float:
    """Share of real ``images`` (float, [-1, 1]) that ``D`` (called as ``D(x, y)``) calls
    real.

    D runs as it does in training (training mode: batch norm on batch statistics, real
    batches alone) on batches of ``batch_size``; its buffers (batch-norm running statistics,
    spectral-norm vectors) are put back afterwards, so training is not disturbed.
    """
    if len(images) == 0:
        return math.nan
    saved = {name: b.detach().clone() for name, b in D.named_buffers()}
    was_training = D.training
    D.train()
    try:
        hits = total = 0
        for x, y in _chunks(images, labels, batch_size):
            if len(x) < 2 and len(images) >= 2:  # a batch of one breaks batch norm
                continue
            out = D(x.to(device), None if y is None else y.to(device)).float().flatten()
            hits += int((out > threshold).sum())
            total += out.numel()
    finally:
        D.train(was_training)
        buffers = dict(D.named_buffers())
        for name, value in saved.items():
            buffers[name].copy_(value)
    return hits / total if total else math.nan


class Memorised(NamedTuple):
    """What :func:`memorisation` found."""

    near_copies: float
    """Share of samples closer to their nearest training image than any held-out real image
    is to its nearest training image."""
    nn_fake: float
    """Median distance from a sample to its nearest training image."""
    nn_real: float
    """Median distance from a held-out real image to its nearest training image."""
    distance: torch.Tensor
    """Each sample's distance to its nearest training image ``(M,)``."""
    nearest: torch.Tensor
    """Index of that training image ``(M,)``."""


def nearest(x: torch.Tensor, ref: torch.Tensor, block: int = 1024
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance from each row of ``x`` to its nearest row of ``ref``, and that row's index."""
    dist, idx = [], []
    ref = ref.float()
    for i in range(0, len(x), block):
        d = torch.cdist(x[i:i + block].float().to(ref.device), ref)
        value, where = d.min(dim=1)
        dist.append(value)
        idx.append(where)
    return torch.cat(dist), torch.cat(idx)


def memorisation(fake: torch.Tensor, train: torch.Tensor, held: torch.Tensor) -> Memorised:
    """Near-copies of training images among generated samples, in a feature space.

    A held-out real image is a new draw from the same distribution: the closest any of them
    comes to a training image is how close an honest new sample gets. A sample closer than
    that is a near-copy. A generator of new samples has a share near 0 (about 1 in the
    number of held-out images); one that returns training images has a share of 1.

    Args:
        fake: ``(M, D)`` features of generated samples.
        train: ``(N, D)`` features of the training images.
        held: ``(H, D)`` features of held-out real images (never trained on).
    """
    if len(fake) == 0 or len(train) == 0 or len(held) == 0:
        raise ValueError("memorisation needs samples, training and held-out features")
    d_fake, idx = nearest(fake, train)
    d_held, _ = nearest(held, train)
    bar = d_held.min()
    return Memorised(near_copies=float((d_fake < bar).double().mean()),
                     nn_fake=float(d_fake.median()), nn_real=float(d_held.median()),
                     distance=d_fake.cpu(), nearest=idx.cpu())


def class_shares(pred: torch.Tensor, n_classes: int) -> list[float]:
    """The share of predictions in each class ``0..n_classes-1`` (all 0 for none)."""
    counts = torch.bincount(pred.detach().flatten().long().cpu(), minlength=n_classes)
    total = int(counts.sum())
    return [float(c) / total if total else 0.0 for c in counts[:n_classes].tolist()]


def legible(logits: torch.Tensor) -> float:
    """The share of rows of ``logits`` (N, classes) whose top class has softmax probability
    of at least :data:`LEGIBLE` (0.0 for no rows)."""
    if len(logits) == 0:
        return 0.0
    top = logits.detach().float().softmax(dim=1).amax(dim=1)
    return float((top >= LEGIBLE).float().mean())


class OverfitMonitor:
    """Warns once per episode when D is clearly better on its training digits than on
    held-out ones for :data:`OVERFIT_PATIENCE` evaluations in a row; re-arms when it clears."""

    def __init__(self, gap: float = OVERFIT_GAP, patience: int = OVERFIT_PATIENCE) -> None:
        self.gap = gap
        self.patience = patience
        self._streak = 0
        self._warned = False

    def update(self, r_t: float, acc_train: float, acc_held: float) -> list[tuple[str, str]]:
        """Take one evaluation's figures; returns ``(kind, message)`` warnings."""
        gap = acc_train - acc_held
        if not gap > self.gap:  # NaN clears too
            self._streak = 0
            self._warned = False
            return []
        self._streak += 1
        if self._streak < self.patience or self._warned:
            return []
        self._warned = True
        rt = "" if math.isnan(r_t) else f", r_t = {r_t:+.2f}"
        return [("overfit", (
            f"the discriminator is overfitting its training images: it calls {acc_train:.0%} "
            f"of them real but only {acc_held:.0%} of held-out real images{rt}, "
            f"{self._streak} evaluations in a row. Remedies: augmentation (diffaug, "
            f"adapted to D by ada_target), R1 (r1_gamma), instance noise (instance_noise), a "
            f"lower lr_d, or more training data"))]

    def state_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint: a resumed run continues the streak."""
        return {"streak": self._streak, "warned": self._warned}

    def load_state_dict(self, state: Any) -> None:
        """Mirror of :meth:`state_dict`; anything malformed (or an older checkpoint without
        it) starts afresh."""
        state = state if isinstance(state, dict) else {}
        streak = state.get("streak", 0)
        self._streak = streak if isinstance(streak, int) and not isinstance(streak, bool) \
            and streak >= 0 else 0
        self._warned = state.get("warned") is True


def offender_strip(samples: torch.Tensor, nearest_train: torch.Tensor) -> torch.Tensor:
    """The samples in a top row over their nearest training images in the row below: a
    ``(C, H, W)`` picture in [0, 1] (inputs ``(k, C, h, w)`` in [-1, 1])."""
    from gantui.data.grids import grid_image

    k = len(samples)
    return grid_image(torch.cat([samples, nearest_train.to(samples.device)]), max(k, 1))


def spread_pick(n: int, k: int) -> torch.Tensor:
    """``min(n, k)`` indices spread evenly over ``range(n)`` (data sorted by class stays
    balanced)."""
    k = min(n, k)
    return torch.tensor([i * n // k for i in range(k)], dtype=torch.long)
