"""The latent prior: every z a run draws (training, previews, evaluation, sampling, the dry
run of a user's model, the bare benchmark loop) comes from :func:`latent`, so a change of
prior is made in one place."""

from __future__ import annotations

import torch

from gantui.config import POINT_SETS, Config


def width(cfg: Config) -> int:
    """The width of G's latent input: ``nz``, plus ``info_codes`` one-hot dimensions."""
    return cfg.nz + cfg.info_codes


def latent(cfg: Config, n: int, generator: torch.Generator | None = None,
           device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` latent vectors drawn from ``generator``: N(0, I) in ``cfg.nz`` dimensions, then
    (``info_codes``) a uniform categorical code, one-hot, in the last ``info_codes``."""
    z = torch.randn(n, cfg.nz, generator=generator, device=device)
    if not cfg.info_codes:
        return z
    code = torch.randint(0, cfg.info_codes, (n,), generator=generator, device=device)
    return torch.cat([z, torch.nn.functional.one_hot(code, cfg.info_codes).to(z.dtype)], 1)


def with_code(cfg: Config, z: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """``z`` (from :func:`latent`) with its categorical code set to ``codes`` (N,)."""
    onehot = torch.nn.functional.one_hot(codes.to(z.device), cfg.info_codes).to(z.dtype)
    return torch.cat([z[:, :cfg.nz], onehot], 1)


def code_rows(cfg: Config, n: int) -> torch.Tensor | None:
    """The code values of a grid of ``n`` images with a row per value (``n // info_codes``
    samples each), as previews and ``gantui sample`` lay out an InfoGAN run; None when the
    run has no code, draws 2-D points or ``n`` is smaller than the code."""
    if not cfg.info_codes or cfg.dataset in POINT_SETS or n < cfg.info_codes:
        return None
    return torch.arange(cfg.info_codes).repeat_interleave(n // cfg.info_codes)


def code(cfg: Config, z: torch.Tensor) -> torch.Tensor:
    """The categorical code (N,) that :func:`latent` put in ``z`` (``info_codes`` > 0)."""
    return z[:, cfg.nz:].argmax(1)


def training_noise(cfg: Config, n: int, generator: torch.Generator,
                   device: torch.device | str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What one training step feeds G: ``n`` latent vectors and, for a conditional model,
    ``n`` labels drawn uniformly (None otherwise), both from ``generator`` in that order."""
    z = latent(cfg, n, generator, device)
    y = (torch.randint(0, cfg.n_classes, (n,), device=device, generator=generator)
         if cfg.conditional else None)
    return z, y
