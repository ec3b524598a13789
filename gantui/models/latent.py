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


def groups(cfg: Config) -> int:
    """How many codes follow z: one per channel for stacked MNIST with ``clusters`` (each
    channel is a digit of its own, with its own cluster), else one."""
    return 3 if cfg.clusters and cfg.dataset == "stacked_mnist" else 1


def width(cfg: Config) -> int:
    """The width of G's latent input: ``nz``, plus the codes' one-hot dimensions."""
    return cfg.nz + groups(cfg) * codes(cfg)


def _onehot(cfg: Config, values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N,) or (N, groups) code values -> their one-hot blocks side by side (N, width - nz)."""
    return torch.nn.functional.one_hot(values, codes(cfg)).to(dtype).flatten(1)


def latent(cfg: Config, n: int, generator: torch.Generator | None = None,
           device: torch.device | str | None = None) -> torch.Tensor:
    """``n`` latent vectors drawn from ``generator``: N(0, I) in ``cfg.nz`` dimensions, then
    (``info_codes`` or ``clusters``) :func:`groups` uniform categorical codes, one-hot, in
    the last dimensions."""
    z = torch.randn(n, cfg.nz, generator=generator, device=device)
    k = codes(cfg)
    if not k:
        return z
    shape = (n,) if groups(cfg) == 1 else (n, groups(cfg))
    values = torch.randint(0, k, shape, generator=generator, device=device)
    return torch.cat([z, _onehot(cfg, values, z.dtype)], 1)


def with_code(cfg: Config, z: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``z`` (from :func:`latent`) with its categorical code set to ``values``: (N,), or
    (N, groups) for several codes."""
    return torch.cat([z[:, :cfg.nz], _onehot(cfg, values.to(z.device), z.dtype)], 1)


def code_rows(cfg: Config, n: int) -> torch.Tensor | None:
    """The code values of a grid of ``n`` images with a row per value (``n // codes``
    samples each), as previews and ``gantui sample`` lay out an InfoGAN or clustered run;
    None when the run has no code, draws 2-D points or ``n`` gives fewer than two samples
    per value (50 clusters in a 64-image grid would be a column, not a grid)."""
    k = codes(cfg)
    if not k or groups(cfg) > 1 or cfg.dataset in POINT_SETS or n < 2 * k:
        return None
    return torch.arange(k).repeat_interleave(n // k)


def code(cfg: Config, z: torch.Tensor) -> torch.Tensor:
    """The categorical code (N,) that :func:`latent` put in ``z`` (:func:`codes` > 0); (N,
    groups) with several codes."""
    if groups(cfg) == 1:
        return z[:, cfg.nz:].argmax(1)
    return z[:, cfg.nz:].unflatten(1, (groups(cfg), codes(cfg))).argmax(2)


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
