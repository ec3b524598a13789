"""Scores for image folders: Inception FID/KID when possible, ``rcfd`` always.

* **FID and KID** use torch-fidelity's InceptionV3 (the TF-compatible port behind the
  published numbers) for 2048-d pool features. torch-fidelity is optional (the ``fid`` extra)
  and imported only here, lazily; its weights are read only from a local file — the
  ``fid_weights`` path, else a known file name in ``torch.hub.get_dir()/checkpoints/`` —
  never downloaded. Real-image features are cached per folder, size and weights file.
  Generated and real images are compared at the training resolution, as uint8 (the way
  samples are saved). From 2,000 samples FID reads higher than the customary 50,000-sample
  FID; compare gantui's numbers with gantui's.
* **rcfd** is the Fréchet distance on features of a fixed, seeded random convolutional
  network (:class:`RandomConvFeatures`): needs nothing, computes in seconds, and moves with
  sample quality and collapse; its scale is its own.
"""

from __future__ import annotations

import hashlib
import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from gantui.errors import GantuiError
from gantui.files import atomic_write_bytes

INCEPTION_FILES = (
    "weights-inception-2015-12-05-6726825d.pth",  # torch-fidelity's own download name
    "pt_inception-2015-12-05-6726825d.pth",  # pytorch-fid's port of the same TF checkpoint
    # (loaded strictly: a file whose keys do not fit is refused with a message)
)
"""Inception weight files looked for in the torch hub cache, in order."""
INCEPTION_FEATURES = "2048"
"""torch-fidelity's name for the pool3 features that FID and KID use."""
FEATURE_CACHE_VERSION = 1
"""Bump when real-feature extraction changes: old cached features are ignored."""
RCFD_SEED = 20240607
"""Seed of the random network's weights: fixed, so rcfd compares across runs and seeds."""
RCFD_SIZE = 64
"""Side the random network works at; other sizes are resized to it."""


class FidUnavailable(GantuiError):
    """Inception FID cannot be computed here (no torch-fidelity, no weights, bad weights)."""


# ---- rcfd: a random convolutional feature network --------------------------------------------

class RandomConvFeatures(nn.Module):
    """Features of a fixed random convolutional network, for ``rcfd``.

    rcfd (random-conv Fréchet distance) is for trends and collapse only, not comparable
    with FID: a network nobody trained sees colour, contrast and texture statistics at four
    scales, not faces. Falling rcfd means samples are getting closer to the data; a jump or
    a plateau far above the real-vs-real floor flags collapse or divergence. Its values mean
    nothing outside gantui, and only across runs at the same ``image_size``.

    Input ``(N, C, H, W)`` in [-1, 1], C = 1 or 3 (grey is repeated to RGB), resized to
    64x64. Four 4x4 stride-2 convolutions with ReLU (3 -> 32 -> 64 -> 128 -> 128 channels,
    64 -> 4 pixels), He-normal weights drawn from :data:`RCFD_SEED` with a private generator.
    Features: the spatial mean of every level plus the last level pooled to 2x2 (864-d).
    """

    widths = (32, 64, 128, 128)

    def __init__(self, seed: int = RCFD_SEED) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        convs = []
        c_in = 3
        for c_out in self.widths:
            conv = nn.utils.skip_init(nn.Conv2d, c_in, c_out, 4, 2, 1)  # no global RNG draw
            with torch.no_grad():
                std = math.sqrt(2.0 / (c_in * 16))
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
                conv.bias.zero_()
            convs.append(conv)
            c_in = c_out
        self.convs = nn.ModuleList(convs)
        self.requires_grad_(False)
        self.eval()

    @property
    def dim(self) -> int:
        """Width of a feature row."""
        return sum(self.widths) + 4 * self.widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (RCFD_SIZE, RCFD_SIZE):
            x = F.interpolate(x, size=(RCFD_SIZE, RCFD_SIZE), mode="bilinear", antialias=True,
                              align_corners=False)
        parts = []
        for conv in self.convs:
            x = F.relu(conv(x))
            parts.append(x.mean(dim=(2, 3)))
        parts.append(F.adaptive_avg_pool2d(x, 2).flatten(1))
        return torch.cat(parts, dim=1)


# ---- Inception through torch-fidelity ---------------------------------------------------------

def find_inception_weights(explicit: str = "") -> Path | None:
    """The Inception weights file to use: ``explicit`` if given, else the first of
    :data:`INCEPTION_FILES` in the torch hub cache; None if there is none.

    Raises:
        FidUnavailable: ``explicit`` names a file that does not exist.
    """
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise FidUnavailable(f"FID off: Inception weights {path} not found; scoring by "
                                 f"rcfd only")
        return path
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    for name in INCEPTION_FILES:
        if (checkpoints / name).is_file():
            return checkpoints / name
    return None


def missing_weights_message() -> str:
    """Why FID is off when no weights file was found, and how to turn it on."""
    checkpoints = Path(torch.hub.get_dir()) / "checkpoints"
    return (f"FID off: no Inception weights (pass fid_weights, or put "
            f"{INCEPTION_FILES[0]} in {checkpoints}); scoring by rcfd only")


def require_torch_fidelity() -> None:
    """Check that torch-fidelity can be imported (it is optional: the ``fid`` extra).

    Raises:
        FidUnavailable: it is not installed.
    """
    try:
        import torch_fidelity.feature_extractor_inceptionv3  # noqa: F401
    except ImportError:
        raise FidUnavailable("FID off: torch-fidelity is not installed (pip install "
                             "'gantui[fid]'); scoring by rcfd only") from None


def load_inception(weights: Path, device: torch.device) -> nn.Module:
    """torch-fidelity's InceptionV3 feature extractor with weights from a local file.

    The weights path is always given, so torch-fidelity never downloads. The file is first
    read with ``weights_only=True``: a file that is not a plain state_dict is refused before
    torch-fidelity (which loads it with full unpickling) sees it.

    Raises:
        FidUnavailable: torch-fidelity is not installed, or the file does not fit.
    """
    require_torch_fidelity()
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "fc.weight" not in state:
            raise ValueError("not an InceptionV3 state_dict")
        del state
        with torch.random.fork_rng(devices=[]):  # its layers' initial draws are discarded
            model = FeatureExtractorInceptionV3("inception-v3-compat", [INCEPTION_FEATURES],
                                                feature_extractor_weights_path=str(weights))
    except Exception as exc:  # unpickling errors, shape mismatches, torch-fidelity asserts
        detail = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise FidUnavailable(f"FID off: Inception weights {weights} do not load ({detail}); "
                             f"scoring by rcfd only") from None
    return model.to(device).eval()


@torch.no_grad()
def inception_features(model: nn.Module, images: torch.Tensor, batch_size: int = 100
                       ) -> torch.Tensor:
    """2048-d Inception features of uint8 ``(N, C, H, W)`` images (grey repeated to RGB)."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(images), batch_size):
        x = images[i:i + batch_size].to(device)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        out.append(model(x.contiguous())[0].float())
    return torch.cat(out) if out else torch.empty(0, 2048)


# ---- real images from a folder, and their cached Inception features ---------------------------

@dataclass(frozen=True)
class FolderReference:
    """Real images picked from a folder as the reference for folder scores."""

    root: Path
    """The image folder."""
    images: torch.Tensor
    """uint8 ``(R, C, S, S)``: centre-cropped and resized as training does."""
    n_files: int
    """Image files found in the folder (all of them, not just those picked)."""
    key: str
    """Hash of the folder path, its file count, the picked files' sizes and mtimes, the image
    size and channels: names the cached Inception features."""


def folder_reference(root: Path, n: int, image_size: int, channels: int) -> FolderReference:
    """Decode up to ``n`` images spread evenly over the folder's sorted file list.

    Unreadable files are skipped (as in training).

    Raises:
        gantui.data.sources.DataError: no such folder, or no images in it.
        GantuiError: fewer than 2 readable images among those picked.
    """
    from gantui.data.sources import ImageFolder, find_images

    root = Path(root).expanduser()
    files = find_images(root)
    count = min(n, len(files))
    picked = [files[i * len(files) // count] for i in range(count)]
    dataset = ImageFolder(picked, image_size, channels)
    images = [img for img, *_ in (dataset[(i, 0, 0)] for i in range(count)) if img is not None]
    if len(images) < 2:
        raise GantuiError(f"{root}: fewer than 2 readable images among the {count} picked as "
                          f"the reference for scoring")
    parts = [str(root.resolve()), str(len(files)), str(image_size), str(channels)]
    for path in picked:
        st = path.stat()
        parts.append(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns}")
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return FolderReference(root=root, images=torch.stack(images), n_files=len(files), key=key)


def real_inception_features(model: nn.Module, ref: FolderReference, weights: Path,
                            cache_dir: Path, log: Callable[[str], None] | None = None
                            ) -> torch.Tensor:
    """Inception features of the reference images, from the cache or computed and cached.

    The cache file is ``inception-real-<key>.pt`` in ``cache_dir``, keyed by the reference
    (:attr:`FolderReference.key`) and the weights file's name and size. A cache file that
    does not load is recomputed over; one that cannot be written is skipped with a note.
    """
    say = log or (lambda _message: None)
    st = weights.stat()
    key = hashlib.sha256(f"{ref.key}|{weights.name}:{st.st_size}|v{FEATURE_CACHE_VERSION}"
                         .encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"inception-real-{key}.pt"
    if path.is_file():
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
            feats = payload["features"]
            if payload.get("version") == FEATURE_CACHE_VERSION and feats.shape == (
                    len(ref.images), 2048):
                return feats.float()
        except Exception:  # torn or foreign: recompute below
            pass
    say(f"computing Inception features of {len(ref.images):,} real images from {ref.root} "
        f"once; cached at {path}")
    feats = inception_features(model, ref.images).cpu()
    buffer = io.BytesIO()
    torch.save({"version": FEATURE_CACHE_VERSION, "features": feats,
                "root": str(ref.root), "n": len(ref.images)}, buffer)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buffer.getvalue())
    except OSError as exc:
        say(f"could not cache real Inception features at {path}: {exc.strerror or exc}")
    return feats


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] as uint8 images (as they would be saved)."""
    return ((x.float() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 images as float in [-1, 1] (the mapping the trainer uses)."""
    return images.float().div(127.5).sub(1.0)
