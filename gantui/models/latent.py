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
