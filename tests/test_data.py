"""Datasets: the bundled MNIST subset, torchvision-layout MNIST, image folders, the ring."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gantui import data
from gantui.data import DataError, FolderBatches, make_batches

from .conftest import make_image_folder, tiny

CPU = torch.device("cpu")


def test_bundled_mnist_is_the_5k_subset() -> None:
    images, labels = data.load_bundled_mnist()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [500] * 10
    batches = make_batches(tiny("dcgan-mnist"), CPU)
    assert "bundled 5,000-digit subset" in batches.note
    x, y = batches.next()
    assert x.shape == (16, 1, 28, 28) and y is None
    assert -1.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9


def test_full_mnist_from_a_torchvision_root(tmp_path: Path) -> None:
    """Write a tiny MNIST in torchvision's raw idx layout and load it as the full set."""
    import gzip
    import struct

    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    n = 40
    pixels = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8)
    labels = torch.arange(n, dtype=torch.uint8) % 10
    for prefix in ("train", "t10k"):
        with open(raw / f"{prefix}-images-idx3-ubyte", "wb") as fh:
            fh.write(struct.pack(">IIII", 2051, n, 28, 28) + pixels.numpy().tobytes())
        with open(raw / f"{prefix}-labels-idx1-ubyte", "wb") as fh:
            fh.write(struct.pack(">II", 2049, n) + labels.numpy().tobytes())
    del gzip
    cfg = tiny("cdcgan-mnist", f"data={tmp_path}")
    batches = make_batches(cfg, CPU)
    assert f"full training set, {n} digits" in batches.note
    x, y = batches.next()
    assert x.shape == (16, 1, 28, 28) and y is not None and y.max() < 10
    # the MNIST folder itself works too
    assert make_batches(tiny("dcgan-mnist", f"data={tmp_path / 'MNIST'}"), CPU).steps_per_epoch


def test_missing_mnist_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        make_batches(tiny("dcgan-mnist", f"data={tmp_path / 'nope'}"), CPU)
    with pytest.raises(DataError, match="no MNIST found under"):
        make_batches(tiny("dcgan-mnist", f"data={tmp_path}"), CPU)


def test_image_folder_is_searched_recursively_and_skips_bad_files(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "celeba", n=24, size=40, bad=3)
    cfg = tiny("dcgan-celeba", f"data={root}", "batch_size=8", "image_size=32")
    batches = FolderBatches(cfg, CPU)
    assert len(batches.files) == 27 and batches.steps_per_epoch == 3
    seen = 0
    for _ in range(6):  # two epochs
        x, _ = batches.next()
        assert x.shape[1:] == (3, 32, 32) and -1 <= x.min() and x.max() <= 1
        seen += x.shape[0]
    # a broken file makes its batch smaller, never fatal; each is counted when met
    assert batches.skipped >= 1
    assert seen + batches.skipped == 6 * 8
    assert batches.epoch() == 2


def test_image_folder_resume_gives_the_same_batches(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", n=20, size=16)
    cfg = tiny("dcgan-celeba", f"data={root}", "batch_size=4", "image_size=16",
               "num_workers=2")
    first = FolderBatches(cfg, CPU)
    for _ in range(7):
        first.next()
    state = first.state_dict()
    expected = [first.next()[0] for _ in range(4)]
    second = FolderBatches(cfg, CPU)
    second.load_state_dict(state)
    for want in expected:
        assert torch.equal(second.next()[0], want)


@pytest.mark.parametrize(("setup", "fragment"), [
    ("missing", "does not exist"),
    ("empty", "no images in"),
    ("file", "is not a folder"),
])
def test_bad_folders_are_clear_errors(tmp_path: Path, setup: str, fragment: str) -> None:
    target = tmp_path / "x"
    if setup == "empty":
        target.mkdir()
        (target / "notes.txt").write_text("hi")
    elif setup == "file":
        target.write_text("hi")
    with pytest.raises(DataError, match=fragment):
        make_batches(tiny("dcgan-celeba", f"data={target}"), CPU)


def test_folder_without_data_path_says_what_is_expected() -> None:
    with pytest.raises(DataError, match="needs --data PATH"):
        make_batches(tiny("dcgan-celeba"), CPU)


def test_ring_samples_sit_on_the_eight_modes() -> None:
    from gantui.metrics import ring_coverage

    batches = make_batches(tiny("ring-8", "batch_size=4000"), CPU)
    x, _ = batches.next()
    covered, quality = ring_coverage(x)
    assert covered == 8 and quality > 0.98  # 1 - exp(-9/2) of a 2-D Gaussian lies within 3 sigma
    assert torch.allclose(x.norm(dim=1).mean(), torch.tensor(2.0), atol=0.01)


def test_ring_coverage_counts_modes_like_veegan() -> None:
    from gantui.metrics import ring_coverage

    modes = data.ring_modes()
    collapsed = modes[:1].repeat(100, 1)
    assert ring_coverage(collapsed) == (1, 1.0)
    far = modes * 1.5
    assert ring_coverage(far) == (0, 0.0)
    half = torch.cat([modes[:4], modes[:4] * 1.5])
    assert ring_coverage(half) == (4, 0.5)
