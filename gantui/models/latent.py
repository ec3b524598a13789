"""The latent prior: every z a run draws (training, previews, evaluation, sampling, the dry
run of a user's model, the bare benchmark loop) comes from :func:`latent`, so a change of
prior is made in one place."""

from __future__ import annotations

import torch

from gantui.config import Config


def latent(cfg: Config, n: int, generator: torch.Generator | None = None,
           device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` latent vectors, N(0, I) in ``cfg.nz`` dimensions, drawn from ``generator``."""
    return torch.randn(n, cfg.nz, generator=generator, device=device)


def training_noise(cfg: Config, n: int, generator: torch.Generator,
                   device: torch.device | str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What one training step feeds G: ``n`` latent vectors and, for a conditional model,
    ``n`` labels drawn uniformly (None otherwise), both from ``generator`` in that order."""
    z = latent(cfg, n, generator, device)
    y = (torch.randint(0, cfg.n_classes, (n,), device=device, generator=generator)
         if cfg.conditional else None)
    return z, y
