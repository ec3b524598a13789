"""GAN objectives by name. Each takes raw discriminator outputs (logits), never probabilities."""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("nonsaturating", "saturating", "hinge", "lsgan")


def d_loss(name: str, real: torch.Tensor, fake: torch.Tensor,
           smoothing: float = 0.0) -> torch.Tensor:
    """Discriminator loss on outputs for a real and a fake batch.

    Args:
        name: one of :data:`LOSSES`.
        real: D outputs on real samples, shape (N,).
        fake: D outputs on generated samples, shape (M,).
        smoothing: one-sided label smoothing; real targets are ``1 - smoothing``.
    """
    target = 1.0 - smoothing
    if name in ("nonsaturating", "saturating"):
        return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, target))
                + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake)))
    if name == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if name == "lsgan":
        return 0.5 * ((real - target).pow(2).mean() + fake.pow(2).mean())
    raise ValueError(f"unknown loss {name!r}")


def g_loss(name: str, fake: torch.Tensor) -> torch.Tensor:
    """Generator loss on D outputs for generated samples, shape (N,).

    ``nonsaturating`` minimises -log D(G(z)); ``saturating`` minimises log(1 - D(G(z))), the
    original minimax objective whose gradient vanishes while D rejects G's samples.
    """
    if name == "nonsaturating":
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if name == "saturating":
        return -F.softplus(fake).mean()  # log(1 - sigmoid(l)) = -softplus(l)
    if name == "hinge":
        return -fake.mean()
    if name == "lsgan":
        return 0.5 * (fake - 1.0).pow(2).mean()
    raise ValueError(f"unknown loss {name!r}")


def d_prob(name: str, out: torch.Tensor) -> torch.Tensor:
    """Mean "probability real" the discriminator gives a batch, for the D(x) / D(G(z)) plots.

    Logit losses use the sigmoid; LSGAN's outputs are already regressed towards 1 (real) and
    0 (fake), so they are clamped to [0, 1] instead.
    """
    if name == "lsgan":
        return out.detach().float().clamp(0, 1).mean()
    return torch.sigmoid(out.detach().float()).mean()


def r1_due(gamma: float, every: int, step: int) -> bool:
    """Whether the D steps of training step ``step`` (counted from 0) carry R1: on with
    ``gamma`` > 0, lazily on every ``every``-th step."""
    return gamma > 0 and step % every == 0


def r1_penalty(out_real: torch.Tensor, x: torch.Tensor, gamma: float, every: int = 1
               ) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): gamma/2 E|grad_x D(x)|^2 on real data ``x`` (which must
    require grad) with D's outputs ``out_real``, times ``every`` when applied lazily (every
    ``every`` steps, as StyleGAN2 does), so its average weight stays gamma/2."""
    (grad,) = torch.autograd.grad(out_real.float().sum(), x, create_graph=True)
    penalty = grad.float().pow(2).flatten(1).sum(1).mean()
    return penalty * (0.5 * gamma * every)
