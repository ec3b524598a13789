"""The latent prior: every z a run draws (training, previews, evaluation, sampling, the dry
run of a user's model, the bare benchmark loop) comes from :func:`latent`, so a change of
prior is made in one place."""

from __future__ import annotations

import torch

from gantui.config import POINT_SETS, Config


def codes(cfg: Config) -> int:
    """How many values the categorical code after z takes: ``info_codes`` (InfoGAN) or
    ``clusters`` (self-conditioning; the two are exclusive); 0 without a code."""
    return cfg.info_codes or cfg.clusters


def width(cfg: Config) -> int:
    """The width of G's latent input: ``nz``, plus the code's one-hot dimensions."""
    return cfg.nz + codes(cfg)


def latent(cfg: Config, n: int, generator: torch.Generator | None = None,
           device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` latent vectors drawn from ``generator``: N(0, I) in ``cfg.nz`` dimensions, then
    (``info_codes`` or ``clusters``) a uniform categorical code, one-hot, in the last
    :func:`codes` dimensions."""
    z = torch.randn(n, cfg.nz, generator=generator, device=device)
    k = codes(cfg)
    if not k:
        return z
    code = torch.randint(0, k, (n,), generator=generator, device=device)
    return torch.cat([z, torch.nn.functional.one_hot(code, k).to(z.dtype)], 1)


def with_code(cfg: Config, z: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``z`` (from :func:`latent`) with its categorical code set to ``values`` (N,)."""
    onehot = torch.nn.functional.one_hot(values.to(z.device), codes(cfg)).to(z.dtype)
    return torch.cat([z[:, :cfg.nz], onehot], 1)


def code_rows(cfg: Config, n: int) -> torch.Tensor | None:
    """The code values of a grid of ``n`` images with a row per value (``n // codes``
    samples each), as previews and ``gantui sample`` lay out an InfoGAN or clustered run;
    None when the run has no code, draws 2-D points or ``n`` gives fewer than two samples
    per value (50 clusters in a 64-image grid would be a column, not a grid)."""
    k = codes(cfg)
    if not k or cfg.dataset in POINT_SETS or n < 2 * k:
        return None
    return torch.arange(k).repeat_interleave(n // k)


def code(cfg: Config, z: torch.Tensor) -> torch.Tensor:
    """The categorical code (N,) that :func:`latent` put in ``z`` (:func:`codes` > 0)."""
    return z[:, cfg.nz:].argmax(1)


def training_noise(cfg: Config, n: int, generator: torch.Generator,
                   device: torch.device | str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """What one training step feeds G: ``n`` latent vectors and, for a conditional model,
    ``n`` labels drawn uniformly (None otherwise), both from ``generator`` in that order.
    With ``clusters`` the labels are the clusters in z's code, which D is told."""
    z = latent(cfg, n, generator, device)
    if cfg.clusters:
        return z, code(cfg, z)
    y = (torch.randint(0, cfg.n_classes, (n,), device=device, generator=generator)
         if cfg.conditional else None)
    return z, y
