"""The judges: small CNNs that gantui trains itself to score generated images of labelled data.

Inception (the network behind FID) cannot be downloaded offline and knows nothing about
digits, so MNIST runs are judged by a classifier trained on the same digits: its 128-d
penultimate features feed a Fréchet distance (``judge_fd``), KID and PRDC; its class
predictions give a classifier score, class coverage and, for conditional models, whether
G draws the digit it was asked for.

The judge is trained once per machine and data source (about 20 s on one CPU core for the
bundled 5,000 digits, 98.7% held-out accuracy), and cached as a plain ``state_dict`` file::

    $GANTUI_CACHE (or ~/.cache/gantui)/judge-v<version>-<key>.pt

A fifth of the digits (stratified by class, fixed seed) is held out: it measures the judge's
accuracy and is the real reference that generated digits are compared with.

The same network, with the data's channels and side (at most 32 px), judges any labelled data
(:func:`load_data_judge`): Fashion-MNIST, CIFAR-10, a labelled array, class folders. It is
trained once per data set, cached by the data's fingerprint as ``judge-data-v<version>-<key>.pt``.
Every judge records its *floor*: ``judge_fd`` of its held-out real images against its
training images, what a perfect generator would score.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gantui.config import Config
from gantui.data.sources import HOLDOUT, SPLIT_SEED, stratified_split
from gantui.errors import GantuiError
from gantui.files import atomic_write_bytes, cache_root
from gantui.quality import scores

JUDGE_VERSION = 1
"""Bump when the architecture or the training recipe changes: old cache files are ignored."""
DATA_JUDGE_VERSION = 1
"""The same for judges of other labelled data (:func:`load_data_judge`)."""
JUDGE_SIZE = 28
"""Input side the digit judge works at; other sizes are resized to it."""
MAX_SIZE = 32
"""Largest side a data judge works at; larger images are scaled down to it."""
FEATURE_DIM = 128
"""Width of the penultimate feature layer."""
SEED = SPLIT_SEED
"""Seed of the split (:data:`gantui.data.sources.HOLDOUT` of each class held out), the
weights and the batch order in :func:`load_judge`."""

CPU_BATCH = 96
"""Images per forward pass of G or a judge when scoring on the CPU. Larger batches' activations
(tens of MB) lie above glibc's mmap threshold, so a pass can map fresh pages and the kernel's
page faults cost as much as the arithmetic: the stacked-MNIST evaluation (26,000 samples, 78,000
digits judged, one thread) took 30-31 s of wall time, 13 s of it system time, in passes of 500
samples and 1,500 digits, and 17 s (under 0.1 s system) in passes of 96 samples and digits; the
scores are the same. Accelerators keep their large batches (their allocators cache)."""

Log = Callable[[str], None]


def scoring_batch(device: torch.device, accelerated: int) -> int:
    """Images per forward pass when scoring on ``device``: :data:`CPU_BATCH` on the CPU,
    ``accelerated`` elsewhere."""
    return CPU_BATCH if device.type == "cpu" else accelerated


class JudgeError(GantuiError):
    """A judge cannot be trained or loaded."""


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """A same-size 3x3 convolution, batch norm and ReLU."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True)]


def judge_size(side: int) -> int:
    """The side a judge of ``side``-pixel images works at: the side itself up to
    :data:`MAX_SIZE`, rounded down to a multiple of 4 (two poolings), at least 8."""
    return max(8, min(side, MAX_SIZE) // 4 * 4)


class DigitJudge(nn.Module):
    """A small CNN classifier, used as a feature extractor for scores: the MNIST digit judge
    with its defaults, a judge of any labelled data with the data's channels and side.

    Input: ``(N, channels, size, size)`` images in [-1, 1] (the generator's range). Other
    sizes are resized inside :meth:`features`; 3-channel images are averaged to grey for a
    1-channel judge, 1-channel images repeated for a 3-channel one.

    ``(N,C,S,S) -> conv 16 -> pool -> conv 32 -> pool -> conv 64 (64@S/4xS/4) -> linear 128
    (ReLU) = features -> dropout -> linear n_classes``; 3x3 convolutions, each with batch norm
    and ReLU. The digit judge is ``C=1, S=28``.
    """

    def __init__(self, n_classes: int = 10, feature_dim: int = FEATURE_DIM, *,
                 channels: int = 1, size: int = JUDGE_SIZE) -> None:
        super().__init__()
        if channels not in (1, 3) or size % 4 or size < 8:
            raise JudgeError(f"a judge takes 1 or 3 channels and a side that is a multiple of "
                             f"4, at least 8 (got {channels}, {size})")
        self.channels, self.size = channels, size
        self.body = nn.Sequential(
            # (N, C, S, S) -> (N, 16, S/2, S/2)
            *_conv_bn_relu(channels, 16),
            nn.MaxPool2d(2),
            # (N, 16, S/2, S/2) -> (N, 32, S/4, S/4)
            *_conv_bn_relu(16, 32),
            nn.MaxPool2d(2),
            # (N, 32, S/4, S/4) -> (N, 64, S/4, S/4)
            *_conv_bn_relu(32, 64),
            nn.Flatten(),
            # (N, 64 * (S/4)^2) -> (N, feature_dim)
            nn.Linear(64 * (size // 4) ** 2, feature_dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(feature_dim, n_classes)
        self.register_buffer("feature_scale", torch.ones(()))
        """Set after training so features have mean square 1 on the training images: scores
        on them (FD, KID's cubic kernel) then have a familiar scale."""

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """Any ``(N, C, H, W)`` batch in [-1, 1] as float ``(N, channels, size, size)``."""
        x = x.float()
        if x.shape[1] != self.channels:
            x = x.mean(dim=1, keepdim=True) if self.channels == 1 else x.expand(
                -1, self.channels, -1, -1)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear",
                              antialias=True, align_corners=False)
        return x

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate features ``(N, 128)``: non-negative (after a ReLU), scaled by
        :attr:`feature_scale`."""
        return self.body(self.prepare(x)) * self.feature_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits ``(N, n_classes)``."""
        return self.head(self.dropout(self.body(self.prepare(x))))

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(features, logits)`` from one pass."""
        hidden = self.body(self.prepare(x))
        return hidden * self.feature_scale, self.head(self.dropout(hidden))


@dataclass(frozen=True)
class JudgeInfo:
    """What a trained judge is and how good it is: plain values, stored with its weights."""

    accuracy: float
    """Classification accuracy on the held-out digits (0..1)."""
    n_train: int
    """Digits it was trained on."""
    n_holdout: int
    """Digits held out for accuracy and as the real reference."""
    seconds: float
    """Wall time its training took."""
    source: str
    """Where the digits came from, in words."""
    path: str
    """The cache file it was saved to ("" when not cached)."""
    version: int = JUDGE_VERSION
    """Architecture and recipe version (:data:`JUDGE_VERSION`)."""
    floor: float = math.nan
    """``judge_fd`` of the held-out real images against the training images: what a
    generator as good as the data scores (NaN until measured)."""
    n_classes: int = 10
    """Classes it tells apart."""
    channels: int = 1
    """Input channels."""
    size: int = JUDGE_SIZE
    """Input side in pixels."""


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in [0, 255] as float in [-1, 1] (the mapping the trainer uses)."""
    return images.float().div(127.5).sub(1.0)


def random_shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 2,
                 edge: bool = False) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels each way, filling with -1 (black),
    or with the nearest edge pixels when ``edge`` (images without a black background)."""
    n, _, h, w = x.shape
    padded = (F.pad(x, (max_shift,) * 4, mode="replicate") if edge
              else F.pad(x, (max_shift,) * 4, value=-1.0))
    shifts = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen).to(x.device)
    out = torch.empty_like(x)
    code = shifts[:, 0] * (2 * max_shift + 1) + shifts[:, 1]
    for value in torch.unique(code).tolist():
        dy, dx = divmod(value, 2 * max_shift + 1)
        mask = code == value
        out[mask] = padded[mask, :, dy:dy + h, dx:dx + w]
    return out


@contextlib.contextmanager
def _own_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch for the block and put the caller's RNG state back afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def predict(judge: DigitJudge, x: torch.Tensor) -> torch.Tensor:
    """Predicted classes ``(N,)`` of float images in [-1, 1] (judge in eval mode)."""
    device = next(judge.parameters()).device
    batch_size = scoring_batch(device, 1000)
    out = [judge(x[i:i + batch_size].to(device)).argmax(dim=1).cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long)


def default_epochs(n_train: int) -> int:
    """About 32,000 training examples seen, in 1 to 10 epochs (8 for the bundled subset, 1
    for the full 60,000)."""
    return max(1, min(10, round(32_000 / max(n_train, 1))))


def train_judge(images: torch.Tensor, labels: torch.Tensor, *, seed: int = 0,
                holdout: float = HOLDOUT, epochs: int | None = None, batch_size: int = 64,
                lr: float = 2e-3, device: torch.device | str = "cpu",
                source: str = "given digits", edge: bool = False
                ) -> tuple[DigitJudge, JudgeInfo]:
    """Train a judge on uint8 images and measure it on a held-out split.

    A deterministic stratified split (:func:`stratified_split`) holds out ``holdout`` of each
    class; training uses random shifts of up to 2 pixels, Adam and a cosine learning-rate
    decay. Then :attr:`DigitJudge.feature_scale` is set so the training images' features have
    mean square 1, and the floor (:func:`measure_floor`) is measured. The global torch RNG
    state is the same afterwards as before.

    Args:
        images: uint8 ``(N, C, S, S)``, C 1 or 3: ``(N, 1, 28, 28)`` digits make the digit
            judge; other sides are judged at :func:`judge_size`.
        labels: int ``(N,)`` classes 0..K-1 (K >= 2).
        seed: seed of the split, the initial weights and the batch order.
        holdout: fraction of each class held out for measuring accuracy.
        epochs: passes over the training split; None chooses :func:`default_epochs`.
        batch_size: images per optimiser step.
        lr: peak Adam learning rate.
        device: where to train.
        source: the data's description, recorded in the info.
        edge: shifts fill with edge pixels instead of black.

    Returns:
        ``(judge, info)``: the judge frozen (eval mode, no gradients) on the CPU; ``info.path``
        is "" (not cached).
    """
    device = torch.device(device)
    if images.ndim != 4 or images.shape[1] not in (1, 3) or images.shape[2] != images.shape[3]:
        raise JudgeError(f"a judge trains on (N, 1 or 3, S, S) images, got "
                         f"{tuple(images.shape)}")
    n_classes = len(torch.unique(labels))
    if n_classes < 2 or int(labels.min()) < 0:
        raise JudgeError(f"{source}: a judge needs labels of at least 2 classes; the labels "
                         f"hold {n_classes}")
    started = time.perf_counter()
    train_idx, held_idx = stratified_split(labels, holdout, seed)
    if len(train_idx) < batch_size or len(held_idx) == 0:
        raise JudgeError(f"{source}: too few images to train the judge: {len(labels)}")
    if epochs is not None and epochs < 1:
        raise JudgeError(f"the judge needs epochs >= 1 (got {epochs})")
    x_train = to_unit(images[train_idx]).to(device)
    y_train = labels[train_idx].long().to(device)
    epochs = default_epochs(len(train_idx)) if epochs is None else epochs
    steps_per_epoch = len(train_idx) // batch_size
    total = epochs * steps_per_epoch
    gen = torch.Generator().manual_seed(seed * 1_000_003 + 202)
    with _own_rng(seed, device):
        judge = DigitJudge(int(labels.max()) + 1, channels=images.shape[1],
                           size=judge_size(images.shape[-1])).to(device)
        x_train = judge.prepare(x_train)  # once: the judge's channels and side
        opt = torch.optim.Adam(judge.parameters(), lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, total) / total)))
        judge.train()
        for _ in range(epochs):
            perm = torch.randperm(len(train_idx), generator=gen).to(device)
            for i in range(steps_per_epoch):
                idx = perm[i * batch_size:(i + 1) * batch_size]
                x = random_shift(x_train[idx], gen, edge=edge)
                loss = F.cross_entropy(judge(x), y_train[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    judge.eval()
    with torch.no_grad():
        step = scoring_batch(x_train.device, 1000)
        square = torch.cat([judge.body(x_train[i:i + step]).square().mean(dim=1)
                            for i in range(0, len(x_train), step)]).mean()
        judge.feature_scale.fill_(float(square.clamp(min=1e-12).rsqrt()))
    pred = predict(judge, to_unit(images[held_idx]))
    accuracy = float((pred == labels[held_idx].cpu()).double().mean())
    judge = judge.cpu().requires_grad_(False)
    info = JudgeInfo(accuracy=accuracy, n_train=len(train_idx), n_holdout=len(held_idx),
                     seconds=time.perf_counter() - started, source=source, path="",
                     floor=measure_floor(judge, images, held_idx),
                     n_classes=judge.head.out_features, channels=judge.channels,
                     size=judge.size)
    return judge, info


@torch.no_grad()
def judge_features(judge: DigitJudge, images: torch.Tensor) -> torch.Tensor:
    """The judge's features ``(N, 128)`` of uint8 images, on the judge's device."""
    device = next(judge.parameters()).device
    batch_size = scoring_batch(device, 1000)
    return torch.cat([judge.features(to_unit(images[i:i + batch_size]).to(device))
                      for i in range(0, len(images), batch_size)])


def measure_floor(judge: DigitJudge, images: torch.Tensor, held_idx: torch.Tensor) -> float:
    """The judge's floor: ``judge_fd`` of the held-out images against the training images
    (all the others). A generator cannot be told from the data below it."""
    held = torch.zeros(len(images), dtype=torch.bool)
    held[held_idx] = True
    real = judge_features(judge, images[~held])
    other = judge_features(judge, images[held])
    return float(scores.frechet_from_stats(*scores.gaussian_stats(other),
                                           *scores.gaussian_stats(real)))


# ---- the per-machine cache -------------------------------------------------------------------

def _fingerprint(root: Path) -> str:
    """The resolved path of a full MNIST root plus names, sizes and mtimes of its raw files."""
    parts = [str(root.expanduser().resolve())]
    for raw in (root / "MNIST" / "raw", root / "raw", root):
        if raw.is_dir():
            for f in sorted(raw.iterdir()):
                if f.is_file():
                    st = f.stat()
                    parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts)


def _load_source(source: str, mnist_root: str) -> tuple[torch.Tensor, torch.Tensor, str, str]:
    """``(images, labels, description, cache key)`` for a data source."""
    from gantui.data.sources import bundled_mnist_path, load_bundled_mnist, load_full_mnist

    if source == "full" and not mnist_root:
        raise JudgeError("digit-judge source 'full' needs mnist_root, a torchvision MNIST root")
    if source == "bundled" and not mnist_root:
        images, labels = load_bundled_mnist()
        ident = f"bundled:{bundled_mnist_path().stat().st_size}"
        text = f"bundled {len(labels):,}-digit MNIST subset"
    elif source in ("bundled", "full"):
        root = Path(mnist_root).expanduser()
        images, labels = load_full_mnist(root)
        ident = f"full:{_fingerprint(root)}"
        text = f"MNIST at {root}, {len(labels):,} digits"
    else:
        raise JudgeError(f"unknown digit-judge source {source!r} (expected 'bundled', or "
                         f"'full' with an MNIST root)")
    key = hashlib.sha256(f"{ident}|holdout={HOLDOUT}|seed={SEED}".encode()).hexdigest()[:12]
    return images, labels, text, key


def _save(path: Path, judge: DigitJudge, info: JudgeInfo, held_idx: torch.Tensor,
          n_images: int, version: int = JUDGE_VERSION) -> None:
    """Write the cache file atomically: weights, info as plain values, held-out indices."""
    payload = {
        "version": version,
        "state_dict": judge.state_dict(),
        "info": dataclasses.asdict(info),
        "held_out": held_idx.clone(),
        "n_images": n_images,
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())


def _load(path: Path, n_images: int, version: int = JUDGE_VERSION
          ) -> tuple[DigitJudge, JudgeInfo, torch.Tensor]:
    """Read a cache file; any mismatch raises (the caller retrains)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("version") != version:
        raise ValueError("not a judge file of this version")
    if payload["n_images"] != n_images:
        raise ValueError(f"made for {payload['n_images']} digits, the data has {n_images}")
    info = JudgeInfo(**payload["info"])
    held = payload["held_out"].long()
    if held.ndim != 1 or len(held) != info.n_holdout or (len(held) and (
            held.min() < 0 or held.max() >= n_images)):
        raise ValueError("held-out indices do not fit the data")
    with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten anyway
        judge = DigitJudge(info.n_classes, channels=info.channels, size=info.size)
    judge.load_state_dict(payload["state_dict"])  # strict: missing or extra keys raise
    return judge.eval().requires_grad_(False), info, held


def load_judge(source: str = "bundled", mnist_root: str = "", cache_dir: Path | None = None,
               log: Log | None = None, *, device: torch.device | str = "cpu"
               ) -> tuple[DigitJudge, JudgeInfo, torch.Tensor, torch.Tensor]:
    """The digit judge for a data source: from the cache, or trained once and cached.

    A cache file that is unreadable, of another version or made for other data is trained
    over (with a note through ``log``), never a crash. A cache folder that cannot be written
    costs a retrain next time, with a note. The global torch RNG state is left unchanged.

    Args:
        source: ``"bundled"`` (the 5,000-digit subset), or ``"full"`` with ``mnist_root``.
            A non-empty ``mnist_root`` always means the full set from that root.
        mnist_root: a torchvision MNIST root (``gantui.data.sources.load_full_mnist``).
        cache_dir: where judges are cached; default ``$GANTUI_CACHE`` or ``~/.cache/gantui``.
        log: called with one-line messages for the user (training, cache trouble).
        device: where to train if training is needed (the judge is returned on the CPU).

    Returns:
        ``(judge, info, held-out images uint8 (H, 1, 28, 28), held-out labels (H,))``, the
        judge frozen (eval mode, no gradients) on the CPU.

    Raises:
        JudgeError: an unknown source; gantui.data.sources.DataError: the digits cannot be loaded.
    """
    say = log or (lambda _message: None)
    images, labels, text, key = _load_source(source, mnist_root)
    path = cache_root(cache_dir) / f"judge-v{JUDGE_VERSION}-{key}.pt"
    if path.is_file():
        try:
            judge, info, held = _load(path, len(labels))
            info = dataclasses.replace(info, path=str(path))  # where it is now
            if math.isnan(info.floor):  # a file from before floors were recorded
                info = dataclasses.replace(info, floor=measure_floor(judge, images, held))
            return judge, info, images[held], labels[held]
        except Exception as exc:  # torn, foreign or stale: any failure means "train again"
            say(f"digit judge cache {path} is unusable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}); retraining")
    say(f"training the digit judge once for this machine ({text}); cached at {path}")
    judge, info = train_judge(images, labels, seed=SEED, holdout=HOLDOUT, device=device,
                              source=text)
    _, held = stratified_split(labels, HOLDOUT, SEED)
    floor = measure_floor(judge, images, held) if math.isnan(info.floor) else info.floor
    info = dataclasses.replace(info, path=str(path), floor=floor)
    try:
        _save(path, judge, info, held, len(labels))
    except OSError as exc:
        say(f"could not cache the digit judge at {path}: {exc.strerror or exc}; it will be "
            f"trained again next time")
    say(f"digit judge trained in {info.seconds:.1f} s: {info.accuracy:.1%} accurate on "
        f"{info.n_holdout:,} held-out digits")
    return judge, info, images[held], labels[held]


# ---- judges of any labelled data -------------------------------------------------------------

@dataclass(frozen=True)
class JudgeData:
    """Labelled images a judge is trained on and scores against."""

    images: torch.Tensor
    """uint8 ``(N, C, S, S)``, S at most :data:`MAX_SIZE`."""
    labels: torch.Tensor
    """int64 ``(N,)``."""
    class_names: tuple[str, ...]
    """The classes in label order."""
    text: str
    """Where the images came from, in words."""


def labelled_data(cfg: Config) -> JudgeData | None:
    """The labelled images of a run's data, or None when its data has no labels.

    Labelled: CIFAR-10, Fashion-MNIST, an array with ``y``, and the class folders of a
    conditional ``folder`` run (decoded at the run's size and channels, from the prepared
    cache when it holds them). Images larger than :data:`MAX_SIZE` are scaled down to it.

    Raises:
        gantui.data.datasets.DataError: the data is missing or unusable.
    """
    from gantui.data import datasets
    from gantui.data.cache import labelled_folder

    if cfg.dataset in datasets.MEMORY_SETS:
        found = datasets.read(cfg.dataset, cfg.data)
    elif cfg.dataset == "folder" and cfg.conditional and cfg.data:
        found = labelled_folder(Path(cfg.data), cfg.image_size, cfg.channels,
                                workers=cfg.num_workers, use_cache=cfg.data_cache)
    else:
        return None
    if found.labels is None:
        return None
    images = found.images
    side = judge_size(images.shape[-1])
    if images.shape[-1] != side:
        images = F.interpolate(images.float(), size=(side, side), mode="bilinear",
                               antialias=True, align_corners=False)
        images = images.round().clamp(0, 255).to(torch.uint8)
    return JudgeData(images.contiguous(), found.labels.long(), tuple(found.class_names),
                     found.note)


def fingerprint(data: JudgeData) -> str:
    """A key for the judge of these images and labels: their bytes and shape, the split."""
    digest = hashlib.sha256()
    digest.update(data.images.numpy().tobytes())
    digest.update(data.labels.numpy().astype("<i8").tobytes())
    digest.update(f"{tuple(data.images.shape)}|holdout={HOLDOUT}|seed={SEED}".encode())
    return digest.hexdigest()[:16]


def load_data_judge(data: JudgeData, cache_dir: Path | None = None, log: Log | None = None,
                    *, device: torch.device | str = "cpu"
                    ) -> tuple[DigitJudge, JudgeInfo, torch.Tensor, torch.Tensor]:
    """The judge of a labelled data set: from the cache, or trained once and cached.

    Cached as ``judge-data-v<version>-<fingerprint>.pt`` beside the digit judges, with its
    held-out accuracy and floor; unusable cache files are trained over, as
    :func:`load_judge` does.

    Args:
        data: the images and labels (:func:`labelled_data`).
        cache_dir: where judges are cached; default ``$GANTUI_CACHE`` or ``~/.cache/gantui``.
        log: called with one-line messages for the user (training, cache trouble).
        device: where to train if training is needed (the judge is returned on the CPU).

    Returns:
        ``(judge, info, held-out images uint8, held-out labels)``.

    Raises:
        JudgeError: fewer than 2 classes or too few images.
    """
    say = log or (lambda _message: None)
    classes = len(torch.unique(data.labels))
    if classes < 2:
        names = f" ({data.class_names[int(data.labels[0])]})" if (
            len(data.labels) and int(data.labels[0]) < len(data.class_names)) else ""
        raise JudgeError(f"{data.text}: a judge needs at least 2 classes; the labels hold "
                         f"{classes}{names}")
    path = cache_root(cache_dir) / f"judge-data-v{DATA_JUDGE_VERSION}-{fingerprint(data)}.pt"
    n = len(data.labels)
    if path.is_file():
        try:
            judge, info, held = _load(path, n, DATA_JUDGE_VERSION)
            info = dataclasses.replace(info, path=str(path))
            return judge, info, data.images[held], data.labels[held]
        except Exception as exc:  # torn, foreign or stale: any failure means "train again"
            say(f"judge cache {path} is unusable ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}); retraining")
    say(f"training the judge once for this data ({data.text}); cached at {path}")
    train_n = n - int(round(HOLDOUT * n))
    judge, info = train_judge(data.images, data.labels, seed=SEED, holdout=HOLDOUT,
                              batch_size=max(8, min(64, train_n // 8)), device=device,
                              source=data.text, edge=True)
    info = dataclasses.replace(info, path=str(path), version=DATA_JUDGE_VERSION)
    _, held = stratified_split(data.labels, HOLDOUT, SEED)
    try:
        _save(path, judge, info, held, n, DATA_JUDGE_VERSION)
    except OSError as exc:
        say(f"could not cache the judge at {path}: {exc.strerror or exc}; it will be trained "
            f"again next time")
    say(f"judge trained in {info.seconds:.1f} s: {info.accuracy:.1%} accurate on "
        f"{info.n_holdout:,} held-out images of {info.n_classes} classes; its floor "
        f"(held-out vs training images) is judge_fd {info.floor:.3g}")
    return judge, info, data.images[held], data.labels[held]
