"""Clusters of the training images for self-conditioning (``clusters``): k-means on the
leading principal components of the pixels, then a balanced assignment so that every cluster
holds the same number of images (within one) and a uniform code draws them as often as the
data holds them.

No labels are read: the clusters are the data's own coarse modes (at 50 clusters, 77% of the
4,000 bundled training digits share their cluster's most common digit), so a D told an image's
cluster judges it against a narrow part of the data, and G learns each part on its own, as a
conditional GAN learns each class (Liu et al. 2020, self-conditioned GANs, cluster D's features
instead; pixels need no trained network and are fixed for the run).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

COMPONENTS = 50
"""Principal components the k-means runs on: enough for MNIST-scale images' coarse shape,
few enough to keep the distances meaningful and the fit a few seconds on a CPU."""
RESTARTS = 4
"""k-means restarts (``n_init``); the best of them is kept."""


@dataclass(frozen=True)
class Clusters:
    """A fitted split: the projection and the cluster centres in its space."""

    mean: np.ndarray
    """(D,) pixel mean."""
    components: np.ndarray
    """(P, D) principal axes."""
    centres: np.ndarray
    """(K, P) cluster centres."""

    @property
    def k(self) -> int:
        return len(self.centres)

    def project(self, images: torch.Tensor) -> np.ndarray:
        """(N, P) coordinates of float images in [-1, 1], any shape (N, ...)."""
        flat = images.detach().float().cpu().flatten(1).numpy().astype(np.float64)
        return (flat - self.mean) @ self.components.T

    def distances(self, images: torch.Tensor) -> np.ndarray:
        """(N, K) squared distances of ``images`` to every centre."""
        p = self.project(images)
        return ((p * p).sum(1, keepdims=True) - 2.0 * p @ self.centres.T
                + (self.centres * self.centres).sum(1)[None, :])

    def assign(self, images: torch.Tensor) -> torch.Tensor:
        """The nearest cluster (N,) int64 of each image, e.g. of held-out images."""
        return torch.from_numpy(self.distances(images).argmin(1).astype(np.int64))

    def centred_on(self, images: torch.Tensor, labels: torch.Tensor) -> Clusters:
        """The same projection with each cluster's centre moved to the mean of its images
        under ``labels`` (a checkpoint's split, which a refit may have numbered otherwise)."""
        coords = self.project(images)
        lab = labels.cpu().numpy()
        centres = np.stack([coords[lab == c].mean(0) if (lab == c).any() else self.centres[c]
                            for c in range(self.k)])
        return Clusters(self.mean, self.components, centres)


def balanced(distances: np.ndarray) -> np.ndarray:
    """Labels (N,) putting each of N points in one of K clusters, ``N // K`` or one more per
    cluster, preferring near ones: every cluster is first filled to ``N // K``, then the
    ``N % K`` points left take one place each in as many clusters."""
    n, k = distances.shape
    labels = np.full(n, -1, dtype=np.int64)
    _fill(distances, labels, np.full(k, n // k))
    _fill(distances, labels, np.ones(k, dtype=np.int64))
    return labels


def _fill(distances: np.ndarray, labels: np.ndarray, room: np.ndarray) -> None:
    """Place unplaced points (label -1) into clusters with ``room``, in rounds: every one
    proposes to its nearest cluster with room left and each cluster takes its closest
    proposers up to its room, until no point or no room is left."""
    k = distances.shape[1]
    while (free := np.flatnonzero(labels < 0)).size and room.sum() > 0:
        d = distances[free]
        d[:, room == 0] = np.inf
        choice = d.argmin(1)
        dist = d[np.arange(len(free)), choice]
        order = np.lexsort((dist, choice))  # by cluster, then nearest first
        chosen = choice[order]
        starts = np.searchsorted(chosen, chosen, side="left")
        take = (np.arange(len(order)) - starts) < room[chosen]
        labels[free[order[take]]] = chosen[take]
        room -= np.bincount(chosen[take], minlength=k)


def fit(images: torch.Tensor, k: int, seed: int, refit: int = 0
        ) -> tuple[Clusters, torch.Tensor]:
    """Split float images in [-1, 1] (N, ...) into ``k`` equal clusters; with ``refit``, that
    many rounds of moving each centre to the mean of its equal-size cluster and splitting
    again (k-means' centres are fitted to clusters of any size; these fit the equal split).

    Returns:
        the fitted :class:`Clusters` and each image's cluster (N,) int64.
    """
    from sklearn.cluster import KMeans  # a second or two to import: only runs that cluster
    from sklearn.decomposition import PCA

    flat = images.detach().float().cpu().flatten(1).numpy().astype(np.float64)
    parts = min(COMPONENTS, *flat.shape)
    pca = PCA(parts, svd_solver="randomized", random_state=seed).fit(flat)
    clusters = Clusters(pca.mean_, pca.components_, np.zeros((0, parts)))
    coords = clusters.project(images)
    kmeans = KMeans(k, n_init=RESTARTS, random_state=seed).fit(coords)
    clusters = Clusters(pca.mean_, pca.components_, kmeans.cluster_centers_)
    return refitted(clusters, images, torch.from_numpy(balanced(clusters.distances(images))),
                    refit)


def refitted(clusters: Clusters, images: torch.Tensor, labels: torch.Tensor, rounds: int
             ) -> tuple[Clusters, torch.Tensor]:
    """``rounds`` times: each centre moved to the mean of its images under ``labels``, then
    the equal split of ``images`` (float, in [-1, 1]) again. Returns the last centres and
    split (``clusters`` and ``labels`` themselves for 0 rounds)."""
    for _ in range(rounds):
        clusters = clusters.centred_on(images, labels)
        labels = torch.from_numpy(balanced(clusters.distances(images)))
    return clusters, labels
