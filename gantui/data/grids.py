"""Sample grids as images: a batch of pictures tiled, or 2-D points over a mixture's modes."""

from __future__ import annotations

import math

import torch

from gantui.data.sources import ring_modes

GRID_PADDING = 2


def grid_image(images: torch.Tensor, nrow: int) -> torch.Tensor:
    """Images in [-1, 1], shape (N, C, H, W), as one (C, H', W') grid in [0, 1]: ``nrow``
    images a row, 2 black pixels between and around them (the layout of torchvision's
    ``make_grid``, without importing torchvision, whose import costs seconds)."""
    images = images.add(1).div(2).clamp(0, 1)
    n, c, h, w = images.shape
    if n == 1:
        return images[0]
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    pad = GRID_PADDING
    grid = images.new_zeros((c, rows * (h + pad) + pad, cols * (w + pad) + pad))
    for k in range(n):
        y, x = divmod(k, cols)
        top, left = y * (h + pad) + pad, x * (w + pad) + pad
        grid[:, top:top + h, left:left + w] = images[k]
    return grid


def scatter_extent(modes: torch.Tensor) -> float:
    """Half the side of the square a scatter shows: 3 for the ring, 1 beyond the farthest
    mode coordinate for wider mixtures (5 for the 5x5 grid)."""
    return max(3.0, float(modes.abs().max()) + 1.0) if len(modes) else 3.0


def scatter_image(points: torch.Tensor, size: int = 256, extent: float | None = None,
                  modes: torch.Tensor | None = None) -> torch.Tensor:
    """A (3, size, size) picture of 2-D points (black) over a mixture's ``modes`` (pale red;
    default the ring's), ``extent`` each way from the origin (default
    :func:`scatter_extent`)."""
    modes = ring_modes() if modes is None else modes
    extent = scatter_extent(modes) if extent is None else extent
    image = torch.ones(3, size, size)

    def to_pixels(xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ij = ((xy.clamp(-extent, extent) + extent) / (2 * extent) * (size - 1)).round().long()
        return size - 1 - ij[:, 1], ij[:, 0]

    mode_rows, mode_cols = to_pixels(modes)
    for dr in range(-3, 4):
        for dc in range(-3, 4):
            r = (mode_rows + dr).clamp(0, size - 1)
            c = (mode_cols + dc).clamp(0, size - 1)
            image[1, r, c] = image[2, r, c] = 0.6
    rows, cols = to_pixels(points)
    image[:, rows, cols] = 0.0
    return image
