"""Readers for data sets people already have on disk, in their standard formats; nothing is
ever downloaded.

* CIFAR-10: the python version's ``cifar-10-batches-py`` (``data_batch_1`` to ``_5``, pickles
  of a uint8 ``data`` array and ``labels``), unpickled with only numpy's array types allowed.
* Fashion-MNIST: the idx files (``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte``,
  optionally ``.gz``), as torchvision lays them out or on their own.
* An array: one ``.npy`` of images, or an ``.npz`` with images (``x``/``images``) and
  optional labels (``y``/``labels``) and class names (``class_names``).
* Class-labelled image folders (``ROOT/<class>/*.png``, torchvision's ``ImageFolder`` layout):
  the files and their labels.

Every reader returns uint8 images ``(N, C, H, W)`` and int64 labels (or None); the batch
streams in :mod:`gantui.data.sources` fit them to the run's size and channels.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from gantui.errors import GantuiError
from gantui.text import safe

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                   "Sneaker", "Bag", "Ankle boot")
MEMORY_SETS = ("cifar10", "fashion", "array")
"""Data sets read whole into memory by :func:`read`."""
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist"


class DataError(GantuiError):
    """Missing, empty or unusable training data."""


class Labelled(NamedTuple):
    """A data set read into memory."""

    images: torch.Tensor
    """uint8 ``(N, C, H, W)``."""
    labels: torch.Tensor | None
    """int64 ``(N,)`` or None."""
    class_names: tuple[str, ...]
    """Names of the classes in label order (empty when unlabelled)."""
    note: str
    """Where the data came from, for the log."""


def missing_data(dataset: str) -> str:
    """What to pass when a data set's path is missing (one line)."""
    return {
        "cifar10": f"dataset cifar10 needs --data PATH: the folder holding cifar-10-batches-py "
                   f"(the python version, {CIFAR10_URL}, unpacked); nothing is downloaded",
        "fashion": f"dataset fashion needs --data PATH: a folder holding Fashion-MNIST's "
                   f"train-images-idx3-ubyte and train-labels-idx1-ubyte (.gz or not; "
                   f"{FASHION_URL}); nothing is downloaded",
        "array": "dataset array needs --data FILE: a .npy of images (N, H, W[, C]) or an .npz "
                 "with x (images) and optional y (labels)",
    }[dataset]


def read(dataset: str, data: str) -> Labelled:
    """Read a data set of :data:`MEMORY_SETS` from ``data``.

    Raises:
        DataError: missing, truncated or malformed files, with what was expected.
    """
    if not data:
        raise DataError(missing_data(dataset))
    root = Path(data).expanduser()
    if not root.exists():
        raise DataError(f"{safe(root)} does not exist; {missing_data(dataset)}")
    if dataset == "cifar10":
        return read_cifar10(root)
    if dataset == "fashion":
        return read_fashion(root)
    return read_array(root)


# ---- CIFAR-10 --------------------------------------------------------------------------------

class _ArraysOnly(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays; refuses every other global (a pickle can
    otherwise run any code)."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),
               ("numpy._core.multiarray", "_reconstruct"), ("numpy", "ndarray"),
               ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"),
               ("_codecs", "encode")}  # bytes in a protocol-2 pickle written by Python 3

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch "
                                     f"never does")


def _unpickle(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            entry = _ArraysOnly(fh, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read {safe(path)}: {exc.strerror or exc}") from None
    except Exception as exc:  # EOFError, UnpicklingError, ValueError: torn or foreign
        raise DataError(f"{safe(path)} is truncated or not a CIFAR-10 batch "
                        f"({type(exc).__name__}: {safe(exc, 80)})") from None
    if not isinstance(entry, dict):
        raise DataError(f"{safe(path)} is not a CIFAR-10 batch (not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}


def cifar10_dir(root: Path) -> Path:
    """The ``cifar-10-batches-py`` folder: ``root`` itself or inside it."""
    inner = root / "cifar-10-batches-py"
    return inner if inner.is_dir() else root


def read_cifar10(root: Path) -> Labelled:
    """The 50,000 CIFAR-10 training images (however many the five batches hold)."""
    where = cifar10_dir(root)
    images, labels = [], []
    for i in range(1, 6):
        path = where / f"data_batch_{i}"
        if not path.is_file():
            raise DataError(f"{safe(where)}: data_batch_{i} is missing; a CIFAR-10 root holds "
                            f"cifar-10-batches-py/data_batch_1 to data_batch_5 ({CIFAR10_URL}, "
                            f"unpacked)")
        entry = _unpickle(path)
        data, batch_labels = entry.get("data"), entry.get("labels")
        if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2
                or data.shape[1] != 3072 or batch_labels is None
                or len(batch_labels) != data.shape[0]):
            raise DataError(f"{safe(path)} is not a CIFAR-10 batch: expected uint8 data "
                            f"(N, 3072) and N labels")
        images.append(torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()))
        labels.append(torch.as_tensor(np.asarray(batch_labels, dtype=np.int64)))
    y = torch.cat(labels)
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise DataError(f"{safe(where)}: labels outside 0-9; not CIFAR-10")
    names = CIFAR10_CLASSES
    meta = where / "batches.meta"
    if meta.is_file():
        try:
            found = _unpickle(meta).get("label_names")
            decoded = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in found or ())
            if len(decoded) == 10 and all(safe(n) == n and n for n in decoded):
                names = decoded
        except (DataError, UnicodeDecodeError, TypeError):
            pass  # the standard names
    x = torch.cat(images)
    return Labelled(x, y, names, f"CIFAR-10: {len(x):,} training images from {where}")


# ---- Fashion-MNIST ---------------------------------------------------------------------------

def _find_idx(root: Path, stem: str) -> Path | None:
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw"):
        for name in (stem, stem + ".gz"):
            if (folder / name).is_file():
                return folder / name
    return None


def read_idx(path: Path, rank: int) -> np.ndarray:
    """An idx file of unsigned bytes (MNIST's format) with ``rank`` dimensions.

    Raises:
        DataError: unreadable, of another type or rank, or shorter than its header says.
    """
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read {safe(path)}: {safe(exc, 80)}") from None
    if len(raw) < 4 + 4 * rank or raw[:3] != b"\0\0\x08" or raw[3] != rank:
        raise DataError(f"{safe(path)} is not an idx file of unsigned bytes with {rank} "
                        f"dimension(s)")
    dims = struct.unpack(f">{rank}I", raw[4:4 + 4 * rank])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * rank)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{safe(path)} is truncated: its header says {dims}, it holds "
                        f"{body.size:,} bytes")
    return body.reshape(dims)


def read_fashion(root: Path) -> Labelled:
    """Fashion-MNIST's 60,000 training images and labels from their idx files."""
    found = {stem: _find_idx(root, stem)
             for stem in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")}
    missing = [stem for stem, path in found.items() if path is None]
    if missing:
        raise DataError(f"{safe(root)}: {missing[0]} is missing (looked in it, raw/ and "
                        f"FashionMNIST/raw/); {missing_data('fashion')}")
    images = read_idx(found["train-images-idx3-ubyte"], 3)
    labels = read_idx(found["train-labels-idx1-ubyte"], 1)
    if len(images) != len(labels):
        raise DataError(f"{safe(root)}: {len(images):,} images but {len(labels):,} labels")
    if len(labels) and labels.max() > 9:
        raise DataError(f"{safe(root)}: labels outside 0-9; not Fashion-MNIST")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.int64))
    where = found["train-images-idx3-ubyte"].parent
    return Labelled(x, y, FASHION_CLASSES, f"Fashion-MNIST: {len(x):,} images from {where}")


# ---- arrays ----------------------------------------------------------------------------------

def read_array(path: Path) -> Labelled:
    """Images ``(N, H, W)`` or ``(N, H, W, C)`` (C 1 or 3; uint8 0-255 or float 0-1) from a
    ``.npy``, or an ``.npz`` with ``x``/``images`` and optional ``y``/``labels`` and
    ``class_names``."""
    if path.suffix not in (".npy", ".npz"):
        raise DataError(f"{safe(path)}: dataset array reads a .npy or .npz file")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {safe(path)} as a numpy file "
                        f"({type(exc).__name__}: {safe(exc, 80)})") from None
    names: tuple[str, ...] = ()
    y = None
    if isinstance(loaded, np.ndarray):
        x = loaded
    else:
        with loaded:
            keys = list(loaded.files)
            image_key = next((k for k in ("x", "images", "arr_0") if k in keys), None)
            if image_key is None:
                raise DataError(f"{safe(path)} has no images: expected an array named x or "
                                f"images (it holds {', '.join(keys[:5]) or 'nothing'})")
            try:
                x = loaded[image_key]
                label_key = next((k for k in ("y", "labels") if k in keys), None)
                y = loaded[label_key] if label_key else None
                raw_names = loaded["class_names"] if "class_names" in keys else None
            except (ValueError, OSError, EOFError) as exc:
                raise DataError(f"cannot read {safe(path)} ({type(exc).__name__}: "
                                f"{safe(exc, 80)})") from None
            if raw_names is not None:
                names = tuple(str(n) for n in np.asarray(raw_names).reshape(-1))
    images = _images_of(x, path)
    labels = None
    if y is not None:
        y = np.asarray(y)
        if y.ndim != 1 or y.shape[0] != images.shape[0] or y.dtype.kind not in "iu":
            raise DataError(f"{safe(path)}: labels must be integers of shape ({images.shape[0]},) "
                            f"(got {y.dtype} {y.shape})")
        if y.size and y.min() < 0:
            raise DataError(f"{safe(path)}: labels must be >= 0")
        labels = torch.from_numpy(y.astype(np.int64))
        count = int(labels.max()) + 1 if len(labels) else 0
        if names and len(names) != count:
            raise DataError(f"{safe(path)}: {len(names)} class_names for {count} classes")
        if not names:
            names = tuple(str(k) for k in range(count))
        if any(safe(n) != n or not n or len(n) > 100 for n in names):
            raise DataError(f"{safe(path)}: class_names must be printable, 1-100 characters")
    shape = "x".join(map(str, images.shape[1:]))
    return Labelled(images, labels, names, f"array: {len(images):,} images ({shape}) from "
                    f"{path}{', labelled' if labels is not None else ''}")


def _images_of(x: np.ndarray, path: Path) -> torch.Tensor:
    if x.ndim not in (3, 4) or (x.ndim == 4 and x.shape[3] not in (1, 3)):
        raise DataError(f"{safe(path)}: images must be (N, H, W) or (N, H, W, C) with C 1 or "
                        f"3 (got shape {x.shape})")
    if x.dtype == np.uint8:
        pass
    elif x.dtype.kind == "f":
        if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
            raise DataError(f"{safe(path)}: float images must be in [0, 1] (got "
                            f"{x.dtype} in [{x.min():.3g}, {x.max():.3g}])")
        x = np.rint(x * 255).astype(np.uint8)
    else:
        raise DataError(f"{safe(path)}: images of dtype {x.dtype}; expected uint8 (0-255) or "
                        f"float (0-1)")
    if x.ndim == 3:
        x = x[..., None]
    h, w = x.shape[1:3]
    side = min(h, w)  # centre crop to a square, as image folders are
    top, left = (h - side) // 2, (w - side) // 2
    x = x[:, top:top + side, left:left + side]
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# ---- class-labelled folders ------------------------------------------------------------------

class ClassFolders(NamedTuple):
    """An ``ImageFolder`` layout: the image files in a stable order and their labels."""

    files: list[Path]
    labels: np.ndarray
    """int64, one per file."""
    class_names: tuple[str, ...]
    loose: int
    """Images directly under the root, in no class folder (not trained on)."""


def class_folders(root: Path) -> ClassFolders:
    """The class folders under ``root`` (sorted names are labels 0, 1, ...), each searched
    recursively for images.

    Raises:
        DataError: no such folder, fewer than 2 class folders, or a class without images.
    """
    if not root.is_dir():
        raise DataError(f"image folder {safe(root)} does not exist" if not root.exists()
                        else f"{safe(root)} is not a folder")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    loose = sum(1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(classes) < 2:
        found = f" ({safe(classes[0].name)})" if classes else ""
        raise DataError(f"a conditional run on {safe(root)} needs one folder per class "
                        f"(ROOT/<class>/*.png) and at least 2 classes; found {len(classes)}"
                        f"{found}")
    files: list[Path] = []
    labels: list[int] = []
    for label, folder in enumerate(classes):
        found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES
                       and p.is_file())
        if not found:
            raise DataError(f"class folder {safe(folder.name)} under {safe(root)} has no images "
                            f"({', '.join(IMAGE_SUFFIXES)})")
        files += found
        labels += [label] * len(found)
    names = tuple(safe(p.name, 100) for p in classes)
    return ClassFolders(files, np.asarray(labels, dtype=np.int64), names, loose)


def classes_of(dataset: str, data: str, conditional: bool) -> tuple[str, ...] | None:
    """The class names a run on this data trains with, when the data defines them (labelled
    folders and arrays, CIFAR-10, Fashion-MNIST); None for MNIST, ring8 and unconditional
    folders.

    Raises:
        DataError: the data is missing or unusable.
    """
    if dataset == "folder" and conditional and data:
        return class_folders(Path(data).expanduser()).class_names
    if dataset == "cifar10":
        return CIFAR10_CLASSES
    if dataset == "fashion":
        return FASHION_CLASSES
    if dataset == "array" and conditional:
        found = read("array", data)
        if found.labels is None:
            raise DataError(f"{safe(data)} has no labels (y) for a conditional run")
        if len(found.class_names) < 2:
            raise DataError(f"{safe(data)}: a conditional run needs at least 2 classes; its "
                            f"labels hold {len(found.class_names)}")
        return found.class_names
    return None
