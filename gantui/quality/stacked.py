"""Stacked MNIST scored as VEEGAN and PacGAN score it: the digit judge reads each of an
image's three channels, the three digits name one of 1,000 modes, and a sample set is summed
up by the modes it covers (a mode counts with one sample) and KL(its mode histogram ||
uniform). The floor is what real stacked triples score the same way: the judge's own
mistakes and a finite sample keep even real data above KL 0."""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from gantui.quality.diagnostics import class_shares, legible
from gantui.quality.judge import DigitJudge, scoring_batch

MODES = 1000
"""Digit triples: 10^3."""
STANDARD_N = 26_000
"""Samples per evaluation in PacGAN's Table 2."""
BATCH = 1000
"""Stacked images read per judge pass on an accelerator (3,000 digits); on the CPU a third
of :data:`~gantui.quality.judge.CPU_BATCH` (:func:`~gantui.quality.judge.scoring_batch`)."""


@torch.no_grad()
def read_channels(judge: DigitJudge, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The judge's reading of each channel of ``images`` (N, 3, H, W) in [-1, 1]:
    ``(modes (N,), logits (3N, 10))``, the mode ``100 * d0 + 10 * d1 + d2`` with ``dc`` the
    judge's digit for channel ``c``, and its logits for every channel; non-finite pixels count
    as black.

    Raises:
        ValueError: ``images`` does not have three channels.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"stacked MNIST images are (N, 3, H, W); got {tuple(images.shape)}")
    device = next(judge.parameters()).device
    logits = []
    step = max(1, scoring_batch(device, 3 * BATCH) // 3)
    for i in range(0, len(images), step):
        part = torch.nan_to_num(images[i:i + step].float(), nan=-1.0).clamp(-1, 1)
        flat = part.reshape(-1, 1, *part.shape[2:]).to(device)  # one channel per image
        logits.append(judge(flat).cpu())
    if not logits:
        return torch.empty(0, dtype=torch.long), torch.empty(0, 10)
    every = torch.cat(logits)
    d = every.argmax(dim=1).view(-1, 3)
    return d[:, 0] * 100 + d[:, 1] * 10 + d[:, 2], every


def triple_modes(judge: DigitJudge, images: torch.Tensor) -> torch.Tensor:
    """The mode of each image (N, 3, H, W) in [-1, 1] (:func:`read_channels`)."""
    return read_channels(judge, images)[0]


def mode_scores(modes: torch.Tensor, n_modes: int = MODES) -> tuple[int, float]:
    """``(modes covered, KL(histogram || uniform))`` of integer modes in ``[0, n_modes)``:
    a mode is covered by one sample; KL in nats, ``ln(n_modes)`` for total collapse."""
    if len(modes) == 0:
        return 0, math.log(n_modes)
    counts = torch.bincount(modes.long().flatten(), minlength=n_modes).double()
    p = counts[counts > 0] / counts.sum()
    kl = float((p * (p * n_modes).log()).sum())
    return int((counts > 0).sum()), max(kl, 0.0)


def digit_skew(modes: torch.Tensor) -> tuple[list[float], float]:
    """Where the KL of a triple histogram comes from. ``(shares, kl_digits)``: the share of
    each digit over all three channels, and the sum over channels of KL(that channel's digit
    histogram || uniform over 10) in nats. Against the uniform product,
    ``kl = kl_digits + (sum of channel entropies - joint entropy)``: ``kl_digits`` is the
    part a generator pays for favouring some digits; the rest is dependence between channels
    (and the finite sample, about 999 / (2 N) nats for N samples)."""
    m = modes.long().flatten()
    channels = torch.stack([m // 100, m // 10 % 10, m % 10])
    kl = sum(mode_scores(digits, 10)[1] for digits in channels)
    return class_shares(channels, 10), kl


def real_triples(digits: torch.Tensor, n: int, seed: int) -> Iterator[torch.Tensor]:
    """``n`` stacked images in [-1, 1], in batches, of three digits drawn independently and
    uniformly from uint8 ``digits`` (M, 1, H, W), as training draws them."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 2626)
    idx = torch.randint(0, len(digits), (n, 3), generator=gen)
    for part in idx.split(BATCH):
        yield digits[part.flatten()].view(len(part), 3, *digits.shape[2:]).float() \
            .div(127.5).sub(1.0)


def floor(judge: DigitJudge, digits: torch.Tensor, n: int = STANDARD_N,
          seed: int = 0) -> tuple[int, float, float]:
    """What ``n`` real stacked triples of ``digits`` score: ``(modes, kl, legible)``, the
    best a generator can be expected to reach with this judge and sample size; ``legible`` is
    the share of channels the judge reads with confidence (:func:`diagnostics.legible`)."""
    modes, logits = [], []
    for batch in real_triples(digits, n, seed):
        found, read = read_channels(judge, batch)
        modes.append(found)
        logits.append(read)
    if not modes:
        return (*mode_scores(torch.empty(0, dtype=torch.long)), 0.0)
    return (*mode_scores(torch.cat(modes)), legible(torch.cat(logits)))
