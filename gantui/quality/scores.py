"""Sample-quality scores as pure functions of feature or prediction tensors.

Nothing here knows about networks or data: callers extract features (the digit judge,
Inception, a random network) and pass the rows in. Distances and statistics are computed in
float64 where rounding would matter (covariances, matrix square roots, kernel sums).

* :func:`frechet_distance` — FD between Gaussians fitted to two feature sets (FID's formula).
* :func:`kid` — Kernel Inception Distance: unbiased MMD² with a cubic polynomial kernel.
* :func:`classifier_score` — the "inception score" of class probabilities.
* :func:`class_histogram` — how many classes a sample covers, and its label entropy.
* :func:`prdc` — precision, recall, density and coverage (Naeem et al. 2020).
* :func:`conditional_accuracy` — how often a conditional sample is of its requested class.
"""

from __future__ import annotations

import math

import torch

PRESENT_FRACTION = 0.01
"""A class counts as present when it holds at least this fraction of the samples."""


def gaussian_stats(feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and covariance (unbiased, N - 1) of feature rows, in float64.

    Args:
        feats: ``(N, D)`` features, ``N >= 2``.

    Returns:
        ``(mu (D,), cov (D, D))`` on the device of ``feats``.
    """
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need (N >= 2, D) features, got shape {tuple(feats.shape)}")
    x = feats.detach().double()
    mu = x.mean(dim=0)
    centred = x - mu
    cov = centred.T @ centred / (x.shape[0] - 1)
    return mu, cov


def _sqrt_psd(cov: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a positive semi-definite matrix (tiny negative eigenvalues
    from rounding are clamped to 0)."""
    w, v = torch.linalg.eigh((cov + cov.T) / 2)
    return (v * w.clamp(min=0).sqrt()) @ v.T


def frechet_from_stats(mu1: torch.Tensor, c1: torch.Tensor, mu2: torch.Tensor,
                       c2: torch.Tensor) -> float:
    """Fréchet distance between N(mu1, c1) and N(mu2, c2).

    ``|mu1 - mu2|² + Tr(c1 + c2 - 2 (c1^½ c2 c1^½)^½)``, through two symmetric
    eigendecompositions in float64 (stable where ``sqrtm(c1 @ c2)`` is not). Rounding can
    leave a result a hair below 0 for identical inputs; it is clamped to 0.
    """
    mu1, c1 = mu1.double(), c1.double()
    mu2, c2 = mu2.double().to(mu1.device), c2.double().to(mu1.device)
    if mu1.shape != mu2.shape or c1.shape != c2.shape:
        raise ValueError(f"statistics of different dimensions: {tuple(mu1.shape)} vs "
                         f"{tuple(mu2.shape)}")
    root1 = _sqrt_psd(c1)
    middle = root1 @ c2 @ root1
    eig = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0)
    diff = mu1 - mu2
    value = diff.dot(diff) + torch.trace(c1) + torch.trace(c2) - 2 * eig.sqrt().sum()
    return max(float(value), 0.0)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` (N, D) and ``b`` (M, D).

    With Inception pool features this is FID; with other features it has the same form but
    a different scale.
    """
    return frechet_from_stats(*gaussian_stats(a), *gaussian_stats(b))


def kid(a: torch.Tensor, b: torch.Tensor, subsets: int = 50, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance (Bińkowski et al. 2018) between feature rows ``a`` and ``b``.

    The unbiased MMD² estimate with the kernel ``k(x, y) = (x·y / d + 1)³``, averaged over
    ``subsets`` random subsets of ``min(subset_size, N, M)`` rows drawn without replacement
    from each set. Unlike FD it is unbiased: two samples of one distribution average 0
    (single values can be slightly negative).

    Args:
        a: ``(N, D)`` features.
        b: ``(M, D)`` features.
        subsets: number of subset pairs to average.
        subset_size: rows per subset, capped by the smaller set.
        seed: seed of the subset draws (a private generator; the global RNG is untouched).

    Returns:
        ``(mean, std)`` of the per-subset estimates (std with ddof 0, as torch-fidelity).
    """
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"need (N, D) and (M, D) features, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2:
        raise ValueError("KID needs at least 2 rows in each set")
    d = a.shape[1]
    gen = torch.Generator().manual_seed(seed)
    x_all, y_all = a.detach().double(), b.detach().double().to(a.device)
    values = []
    for _ in range(subsets):
        x = x_all[torch.randperm(a.shape[0], generator=gen)[:m].to(a.device)]
        y = y_all[torch.randperm(b.shape[0], generator=gen)[:m].to(a.device)]
        k_xx = (x @ x.T / d + 1) ** 3
        k_yy = (y @ y.T / d + 1) ** 3
        k_xy = (x @ y.T / d + 1) ** 3
        within = (k_xx.sum() - k_xx.diagonal().sum() + k_yy.sum() - k_yy.diagonal().sum())
        values.append(within / (m * (m - 1)) - 2 * k_xy.sum() / (m * m))
    mmd = torch.stack(values)
    return float(mmd.mean()), float(mmd.std(correction=0))


def classifier_score(probs: torch.Tensor, splits: int = 1) -> float:
    """The "inception score" ``exp(E_x KL(p(y|x) || p(y)))`` of class probabilities.

    It ranges from 1 (every sample gets the same prediction) to K (confident predictions,
    spread evenly over K classes).

    Args:
        probs: ``(N, K)`` rows of class probabilities (softmax outputs).
        splits: score ``splits`` equal chunks separately and return their mean, as the
            original Inception Score does (10 there); 1 uses all rows at once.
    """
    p = probs.detach().double()
    if p.ndim != 2 or p.shape[0] < splits or splits < 1:
        raise ValueError(f"need (N >= splits, K) probabilities, got {tuple(p.shape)}")
    scores = []
    for chunk in torch.tensor_split(p, splits):
        marginal = chunk.mean(dim=0, keepdim=True)
        kl = torch.special.xlogy(chunk, chunk) - torch.special.xlogy(chunk, marginal)
        scores.append(math.exp(float(kl.sum(dim=1).mean())))
    return sum(scores) / len(scores)


def class_histogram(pred: torch.Tensor, n_classes: int) -> tuple[int, float]:
    """How many classes the predicted labels cover, and the entropy of their histogram.

    Args:
        pred: ``(N,)`` integer class predictions in ``[0, n_classes)``.
        n_classes: number of classes.

    Returns:
        ``(classes present, entropy in nats)``: a class is present when it holds at least 1%
        of the samples; the entropy is ``log(n_classes)`` for a perfectly even spread and 0
        for a single class (or no samples).
    """
    if pred.numel() == 0:
        return 0, 0.0
    counts = torch.bincount(pred.detach().flatten().long().cpu(), minlength=n_classes)
    frac = counts.double() / counts.sum()
    present = int((frac >= PRESENT_FRACTION).sum())
    entropy = float(-torch.special.xlogy(frac, frac).sum())
    return present, max(0.0, entropy)  # never -0.0


def _chunk_rows(n_cols: int, budget: int = 1 << 24) -> int:
    """Rows per distance block so a block holds about ``budget`` entries."""
    return max(1, budget // max(n_cols, 1))


def _kth_neighbour_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each row of ``x`` to its k-th nearest other row."""
    radii = []
    step = _chunk_rows(x.shape[0])
    for start in range(0, x.shape[0], step):
        block = torch.cdist(x[start:start + step], x)
        # the smallest distance is the row to itself (0), so the k-th neighbour is index k
        radii.append(block.topk(k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def prdc(real: torch.Tensor, fake: torch.Tensor, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage of Naeem et al. 2020 ("Reliable Fidelity and
    Diversity Metrics for Generative Models").

    Each point's neighbourhood is the ball reaching its k-th nearest neighbour in its own set.

    * precision: fraction of fake points inside some real neighbourhood (fidelity).
    * recall: fraction of real points inside some fake neighbourhood (diversity).
    * density: real neighbourhoods containing a fake point, counted with multiplicity and
      divided by ``k * M``; about 1 when the sets match, above 1 where fakes crowd real modes.
    * coverage: fraction of real neighbourhoods containing at least one fake point.

    Distances are computed in blocks with ``torch.cdist``, so 5,000 x 5,000 points need
    about 64 MB at a time.

    Args:
        real: ``(N, D)`` real features, ``N > k``.
        fake: ``(M, D)`` generated features, ``M > k``.
        k: neighbourhood size.
    """
    if real.shape[0] <= k or fake.shape[0] <= k:
        raise ValueError(f"PRDC with k={k} needs more than {k} points in each set")
    real = real.detach().float()
    fake = fake.detach().float().to(real.device)
    r_real = _kth_neighbour_radius(real, k)
    r_fake = _kth_neighbour_radius(fake, k)
    n_real, n_fake = real.shape[0], fake.shape[0]

    precise = torch.zeros(n_fake, dtype=torch.bool, device=real.device)
    inside = torch.zeros((), dtype=torch.float64, device=real.device)
    nearest_fake = torch.full((n_real,), math.inf, device=real.device)
    step = _chunk_rows(n_real)
    for start in range(0, n_fake, step):
        block = torch.cdist(fake[start:start + step], real)  # (chunk, N)
        hits = block <= r_real[None, :]
        precise[start:start + step] = hits.any(dim=1)
        inside += hits.sum(dtype=torch.float64)
        nearest_fake = torch.minimum(nearest_fake, block.min(dim=0).values)

    recalled = torch.zeros(n_real, dtype=torch.bool, device=real.device)
    step = _chunk_rows(n_fake)
    for start in range(0, n_real, step):
        block = torch.cdist(real[start:start + step], fake)  # (chunk, M)
        recalled[start:start + step] = (block <= r_fake[None, :]).any(dim=1)

    return {
        "precision": float(precise.double().mean()),
        "recall": float(recalled.double().mean()),
        "density": float(inside) / (k * n_fake),
        "coverage": float((nearest_fake <= r_real).double().mean()),
    }


def conditional_accuracy(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of predictions equal to their target labels (0.0 for no samples)."""
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.numel() == 0:
        return 0.0
    return float((pred.detach().cpu() == target.detach().cpu()).double().mean())
