"""What a self-conditioned G (``clusters``) draws for each cluster code, against what that
cluster's training images are, both as the data's judge reads them.

A clustered run's scores are unconditional, so a skew in its class shares (MNIST's class
shares, stacked MNIST's ``kl_digits``) says *that* G over- or under-draws a class, not
*where*. Reading G per code and the cluster's own images with the same judge says where:
whether G draws each cluster's leading class more often than the cluster holds it (it sharpens
the clusters, so its class shares follow how many clusters each class leads), and which
clusters it draws as something else (a cluster whose images mix classes, drawn as a blend).
The judge trained on most of the data's images, so it reads them about as well as it reads its
training set and G's samples at best as well as held-out images: the lower its held-out
accuracy, the more G's shares understate how often G draws the leading class.

Pure functions of tensors and modules; nothing here knows the trainer, the run directory or
the UI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gantui.config import Config
from gantui.data.sources import saved_split
from gantui.errors import GantuiError
from gantui.models.latent import codes, groups, latent, with_code
from gantui.quality.judge import scoring_batch, to_unit
from gantui.quality.stacked import read_channels

BATCH = 500
"""Images per forward pass of G and of the judge on an accelerator (fewer on the CPU:
:func:`~gantui.quality.judge.scoring_batch`)."""
PER_CODE = 100
"""G's samples per cluster code by default (each of stacked MNIST's three channels is read,
so three readings a sample there)."""


@dataclass(frozen=True)
class ClusterReading:
    """Class shares per cluster, of the training images and of G's samples."""

    data: torch.Tensor
    """(K, C): the share of cluster k's training images the judge reads as class c."""
    fake: torch.Tensor
    """(K, C): the same for G's samples given code k."""
    per_code: int
    """G's samples per code."""

    @property
    def leading(self) -> torch.Tensor:
        """(K,) each cluster's most common class among its training images."""
        return self.data.argmax(1)

    def lead_error(self) -> float:
        """The standard error of G's mean leading-class share (binomial per code)."""
        rows = torch.arange(len(self.fake))
        p = self.fake[rows, self.leading]
        return float((p * (1 - p) / self.per_code).sum().sqrt() / len(p))

    def lead_shares(self) -> tuple[float, float]:
        """The mean over clusters of the share of the leading class: ``(data, fake)``. G above
        the data means it draws each cluster's leading class more often than the cluster
        holds it."""
        rows = torch.arange(len(self.data))
        lead = self.leading
        return float(self.data[rows, lead].mean()), float(self.fake[rows, lead].mean())

    def apart(self) -> torch.Tensor:
        """(K,) total variation between each cluster's data and G shares, 0 (the same
        classes in the same shares) to 1 (no class in common)."""
        return 0.5 * (self.fake - self.data).abs().sum(1)

    def worst(self, n: int) -> list[int]:
        """The ``n`` clusters whose G shares are furthest from their data's, furthest first."""
        return self.apart().argsort(descending=True)[:n].tolist()


def shares(classes: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(C,) the share of each class in ``classes`` (all zero when it is empty)."""
    counts = torch.bincount(classes, minlength=n_classes).float()
    return counts / counts.sum().clamp(min=1.0)


@torch.no_grad()
def read(judge: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """The judge's class (N,) of ``images`` (N, C, H, W), float in [-1, 1] or uint8."""
    device = next(judge.parameters()).device
    out = []
    step = scoring_batch(device, BATCH)
    for i in range(0, len(images), step):
        part = images[i:i + step]
        part = to_unit(part) if part.dtype == torch.uint8 else part.float()
        part = torch.nan_to_num(part, nan=-1.0).clamp(-1, 1)
        out.append(judge(part.to(device)).argmax(1).cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


@torch.no_grad()
def read_clusters(judge: nn.Module, n_classes: int, G: nn.Module, cfg: Config,
                  images: torch.Tensor, labels: torch.Tensor, *, per_code: int = PER_CODE,
                  seed: int = 0) -> ClusterReading:
    """Read each cluster's training ``images`` ((N, C, H, W), uint8 or float in [-1, 1];
    stacked MNIST: the single digits) and ``per_code`` samples of ``G`` (called as ``G(z, None)``)
    given each cluster's code (stacked MNIST: every channel's), with ``judge``.

    Args:
        labels: each image's cluster (N,), as the run trained on them.
        seed: seeds G's z, the same for every code.

    Raises:
        GantuiError: ``cfg`` has no clusters; DataError: ``labels`` does not fit ``images``
            (one per image, 0 to ``clusters - 1``).
    """
    k = cfg.clusters
    if not k or codes(cfg) != k:
        raise GantuiError("a cluster reading needs a run with clusters")
    labels = saved_split(labels, len(images), k)
    apart = groups(cfg) > 1
    device = next(G.parameters()).device
    step = scoring_batch(device, BATCH)
    z = latent(cfg, per_code, torch.Generator().manual_seed(seed))
    data, fake = [], []
    found = read(judge, images)
    for c in range(k):
        data.append(shares(found[labels == c], n_classes))
        code = torch.full((per_code, groups(cfg)) if apart else (per_code,), c, dtype=torch.long)
        zc = with_code(cfg, z, code)
        samples = torch.cat([G(zc[i:i + step].to(device), None).float().cpu()
                             for i in range(0, per_code, step)])
        # stacked MNIST: each channel read as a digit of its own, as its scores read them
        classes = read_channels(judge, samples)[1].argmax(1) if apart else read(judge, samples)
        fake.append(shares(classes, n_classes))
    return ClusterReading(torch.stack(data), torch.stack(fake), per_code)


def _name(c: int, names: tuple[str, ...]) -> str:
    return names[c] if c < len(names) else str(c)


def top_classes(row: torch.Tensor, most: int = 3, least: float = 0.1,
                names: tuple[str, ...] = ()) -> str:
    """``"0 62% · 1 38%"``: the ``most`` largest shares of a class-share ``row`` of at least
    ``least`` (the largest always), each class by its name in ``names`` (else its number)."""
    order = row.argsort(descending=True).tolist()[:most]
    kept = [c for i, c in enumerate(order) if i == 0 or float(row[c]) >= least]
    return " · ".join(f"{_name(c, names)} {100 * float(row[c]):.0f}%" for c in kept)


def lines(reading: ClusterReading, n_worst: int = 5, judge_accuracy: float | None = None,
          names: tuple[str, ...] = ()) -> list[str]:
    """The reading in words: the leading-class shares, how many clusters each class leads,
    and the clusters G draws furthest from their data; with ``judge_accuracy`` (on held-out
    real images), how far the judge's own misreadings go. Classes are named by ``names``
    (CIFAR-10's, Fashion-MNIST's) where given, else numbered (digits)."""
    k, n_classes = reading.data.shape
    data, fake = reading.lead_shares()
    error = reading.lead_error()
    leads = torch.bincount(reading.leading, minlength=n_classes).tolist()
    said = [f"G given a cluster's code draws its leading class {100 * fake:.1f}% "
            f"(± {100 * error:.1f}) of the time; the cluster's training images are "
            f"{100 * data:.1f}% that class (per cluster, then the mean of {k})",
            "clusters each class leads: " + "  ".join(f"{_name(c, names)}: {n}"
                                                      for c, n in enumerate(leads))]
    if judge_accuracy is not None:
        said.append(f"the judge reads held-out real images right {100 * judge_accuracy:.1f}% "
                    f"of the time and trained on most of these: G's shares carry more of its "
                    f"misreadings")
    if fake - data > 2 * error:
        said.append("G draws each cluster's leading class more often than the cluster holds "
                    "it: its class shares lean towards these counts")
    said.append("furthest from their data (total variation, 0 = the same shares):")
    apart = reading.apart()
    for c in reading.worst(n_worst):
        said.append(f"  cluster {c:>3}  {float(apart[c]):.2f}  data "
                    f"{top_classes(reading.data[c], names=names)}  |  G "
                    f"{top_classes(reading.fake[c], names=names)}")
    return said


def as_dict(reading: ClusterReading, n_worst: int = 5) -> dict:
    """Plain values for ``--json``: the leading-class shares, the clusters each class leads,
    and the furthest clusters with both rows of shares."""
    data, fake = reading.lead_shares()
    apart = reading.apart()
    return {"per_code": reading.per_code, "lead_data": round(data, 4),
            "lead_fake": round(fake, 4), "lead_fake_error": round(reading.lead_error(), 4),
            "leads": torch.bincount(reading.leading,
                                    minlength=reading.data.shape[1]).tolist(),
            "furthest": [{"cluster": c, "apart": round(float(apart[c]), 4),
                          "data": [round(float(v), 4) for v in reading.data[c]],
                          "fake": [round(float(v), 4) for v in reading.fake[c]]}
                         for c in reading.worst(n_worst)]}
