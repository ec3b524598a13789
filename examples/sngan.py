"""An SNGAN-style ResNet G and D (Miyato et al. 2018, the CIFAR-10 ResNet), for gantui.

Use it with ``gantui train --preset sngan-cifar10 --data DIR`` or any preset plus
``--set model=examples/sngan.py``. gantui calls ``generator(cfg)`` and ``discriminator(cfg)``;
this file reads its own keys from ``cfg.model_args`` (``g_width``, ``d_width``, ``blocks``).

G: z -> linear to a 4x4 map -> residual up-blocks (BN, ReLU, 2x nearest, 3x3 conv) doubling the
side to ``image_size`` -> BN, ReLU, 3x3 conv, tanh.
D: residual down-blocks with spectral norm on every conv and linear -> ReLU, global sum pool ->
a spectrally normalised linear logit; conditional runs add the projection term <embed(y), h>.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm


def _sides(image_size: int) -> int:
    """Up-blocks from 4x4 to ``image_size`` (a power-of-two multiple of 4)."""
    k = math.log2(image_size / 4)
    if image_size < 8 or not k.is_integer():
        raise ValueError(f"the SNGAN example builds 4*2^k images (8, 16, 32, 64...); "
                         f"image_size is {image_size}")
    return int(k)


class UpBlock(nn.Module):
    """BN, ReLU, upsample, conv, BN, ReLU, conv; shortcut: upsample, 1x1 conv."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(c_in), nn.ReLU(), nn.Upsample(scale_factor=2),
            nn.Conv2d(c_in, c_out, 3, 1, 1), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, 1, 1))
        self.skip = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(c_in, c_out, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class Generator(nn.Module):
    def __init__(self, nz: int, width: int, channels: int, image_size: int,
                 n_classes: int = 0) -> None:
        super().__init__()
        self.width = width
        self.embed = nn.Embedding(n_classes, nz) if n_classes else None
        self.linear = nn.Linear(nz, 4 * 4 * width)
        self.blocks = nn.Sequential(*[UpBlock(width, width) for _ in range(_sides(image_size))])
        self.out = nn.Sequential(nn.BatchNorm2d(width), nn.ReLU(),
                                 nn.Conv2d(width, channels, 3, 1, 1), nn.Tanh())

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = z + self.embed(y)
        h = self.linear(z).view(z.shape[0], self.width, 4, 4)
        return self.out(self.blocks(h))


class DownBlock(nn.Module):
    """[ReLU], conv, ReLU, conv, avg-pool; shortcut: 1x1 conv, avg-pool (all convs SN)."""

    def __init__(self, c_in: int, c_out: int, first: bool = False, down: bool = True) -> None:
        super().__init__()
        layers: list[nn.Module] = [] if first else [nn.ReLU()]
        layers += [spectral_norm(nn.Conv2d(c_in, c_out, 3, 1, 1)), nn.ReLU(),
                   spectral_norm(nn.Conv2d(c_out, c_out, 3, 1, 1))]
        pool = [nn.AvgPool2d(2)] if down else []
        self.body = nn.Sequential(*layers, *pool)
        self.skip = nn.Sequential(spectral_norm(nn.Conv2d(c_in, c_out, 1)), *pool)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + self.skip(x)


class Discriminator(nn.Module):
    def __init__(self, channels: int, width: int, image_size: int, blocks: int,
                 n_classes: int = 0) -> None:
        super().__init__()
        downs = min(blocks, _sides(image_size))  # SNGAN at 32x32: down, down, same, same
        stack = [DownBlock(channels, width, first=True, down=downs > 0)]
        stack += [DownBlock(width, width, down=i + 1 < downs) for i in range(blocks - 1)]
        self.blocks = nn.Sequential(*stack)
        self.linear = spectral_norm(nn.Linear(width, 1))
        self.embed = spectral_norm(nn.Embedding(n_classes, width)) if n_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pool
        logit = self.linear(h).flatten()
        if self.embed is not None:  # projection discriminator (Miyato & Koyama 2018)
            logit = logit + (self.embed(y) * h).sum(1)
        return logit


def generator(cfg) -> nn.Module:
    """G for gantui: ``G(z, y)`` -> images (N, channels, image_size, image_size) in [-1, 1]."""
    return Generator(cfg.nz, int(cfg.model_args.get("g_width", 256)), cfg.channels,
                     cfg.image_size, cfg.n_classes if cfg.conditional else 0)


def discriminator(cfg) -> nn.Module:
    """D for gantui: ``D(x, y)`` -> one logit per sample. With ``pack`` > 1 gantui hands it
    ``pack`` samples side by side, so its first layer takes ``pack * channels`` inputs."""
    return Discriminator(cfg.channels * cfg.pack, int(cfg.model_args.get("d_width", 128)),
                         cfg.image_size, int(cfg.model_args.get("blocks", 4)),
                         cfg.n_classes if cfg.conditional else 0)
