"""Synthetic data sets in their real on-disk formats, for the own-data and own-model tests."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 60), "blue": (40, 60, 230)}


def write_cifar10(root: Path, per_batch: int = 20, seed: int = 0) -> Path:
    """``root/cifar-10-batches-py`` with five pickled batches and ``batches.meta``, as the
    python version of CIFAR-10 has them: uint8 ``data`` (N, 3072) and ``labels``, byte keys.
    Class k is a square of grey level 20 k on a background of channel k % 3."""
    where = root / "cifar-10-batches-py"
    where.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(1, 6):
        labels = rng.integers(0, 10, per_batch)
        images = np.zeros((per_batch, 3, 32, 32), np.uint8)
        for k, label in enumerate(labels):
            images[k, label % 3] = 120
            images[k, :, 8:24, 8:24] = 20 * label + rng.integers(0, 20)
        with (where / f"data_batch_{i}").open("wb") as fh:
            pickle.dump({b"batch_label": f"training batch {i} of 5".encode(),
                         b"labels": labels.tolist(), b"data": images.reshape(per_batch, 3072),
                         b"filenames": [b"x.png"] * per_batch}, fh, protocol=2)
    names = [n.encode() for n in ("airplane", "automobile", "bird", "cat", "deer", "dog",
                                  "frog", "horse", "ship", "truck")]
    with (where / "batches.meta").open("wb") as fh:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, fh, protocol=2)
    return root


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> None:
    """An idx file of unsigned bytes (MNIST's format)."""
    header = b"\0\0\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_fashion(root: Path, n: int = 60, gz: bool = False) -> Path:
    """Fashion-MNIST idx files in torchvision's layout (``root/FashionMNIST/raw``)."""
    raw = root / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    for k, label in enumerate(labels):
        images[k, 2 * label:2 * label + 8, 4:24] = 200 + rng.integers(0, 50)
    write_idx(raw / "train-images-idx3-ubyte", images, gz)
    write_idx(raw / "train-labels-idx1-ubyte", labels, gz)
    return root


def write_class_folders(root: Path, per_class: int = 12, size: int = 24,
                        classes: tuple[str, ...] = ("blue", "green", "red")) -> Path:
    """``root/<class>/*.png``: class ``c`` is a disc (or square, alternating) of its colour."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(2)
    for name in classes:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.new("RGB", (size, size), (0, 0, 0))
            draw = ImageDraw.Draw(img)
            a, b = rng.integers(2, size // 3, 2)
            shape = draw.ellipse if i % 2 else draw.rectangle
            shape((int(a), int(b), int(a) + size // 2, int(b) + size // 2), fill=COLOURS[name])
            img.save(folder / f"{i:03d}.png")
    return root


def write_npz(path: Path, n: int = 48, side: int = 16, labels: bool = True,
              dtype: str = "uint8", channels: int | None = None) -> Path:
    """An .npz with ``x`` (N, side, side[, C]) and optional ``y`` in 0-3."""
    rng = np.random.default_rng(3)
    shape = (n, side, side) if channels is None else (n, side, side, channels)
    x = rng.integers(0, 255, shape).astype(dtype)
    arrays = {"x": x}
    if labels:
        arrays["y"] = np.arange(n) % 4
    np.savez(path, **arrays)
    return path


def own_data(dataset: str, tmp_path: Path) -> list[str]:
    """``KEY=VALUE`` overrides that give a preset on these data sets toy data (and a toy
    width to the SNGAN example); [] for the others."""
    if dataset == "cifar10":
        return [f"data={write_cifar10(tmp_path / 'cifar', per_batch=4)}",
                "model_args.g_width=16", "model_args.d_width=16"]
    if dataset == "fashion":
        return [f"data={write_fashion(tmp_path / 'fashion', n=20)}"]
    return []
