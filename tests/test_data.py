"""Datasets: the bundled MNIST subset, torchvision-layout MNIST, image folders, the ring."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch

from gantui.data import sources as data
from gantui.data.batches import make_batches
from gantui.data.sources import DataError, FolderBatches

from .conftest import make_image_folder, tiny

CPU = torch.device("cpu")


def test_bundled_mnist_is_the_5k_subset() -> None:
    images, labels = data.load_bundled_mnist()
    assert images.shape == (5000, 1, 28, 28) and images.dtype == torch.uint8
    assert torch.bincount(labels).tolist() == [500] * 10
    batches = make_batches(tiny("dcgan-mnist-plain"), CPU)
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
    root = tmp_path / "MNIST"
    assert make_batches(tiny("dcgan-mnist-plain", f"data={root}"), CPU).steps_per_epoch


def test_missing_mnist_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        make_batches(tiny("dcgan-mnist-plain", f"data={tmp_path / 'nope'}"), CPU)
    with pytest.raises(DataError, match="no MNIST found under"):
        make_batches(tiny("dcgan-mnist-plain", f"data={tmp_path}"), CPU)


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
    # a broken file makes its batch smaller, never fatal; each distinct file is counted once
    broken = {i for i, f in enumerate(batches.files) if f.name.startswith("broken")}
    met = [i for e in range(2) for i in data.epoch_permutation(27, cfg.seed, e)[:24].tolist()
           if i in broken]
    assert batches.bad == set(met) and batches.skipped == len(set(met)) >= 1
    assert seen + len(met) == 6 * 8
    assert batches.epoch() == 2


def test_skipped_counts_distinct_files_not_misses_per_epoch(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "imgs", n=21, size=16, bad=3)
    cfg = tiny("dcgan-celeba", f"data={root}", "batch_size=8", "image_size=16")
    batches = FolderBatches(cfg, CPU)  # 24 files, 3 batches: each epoch meets every file
    seen = sum(batches.next()[0].shape[0] for _ in range(3))
    assert (seen, batches.skipped) == (21, 3)
    seen += sum(batches.next()[0].shape[0] for _ in range(6))
    assert (seen, batches.skipped, batches.epoch()) == (63, 3, 3)  # not 9: no repeat alerts
    # the set travels with the state, so a resumed run does not count them again
    resumed = FolderBatches(cfg, CPU)
    resumed.load_state_dict(batches.state_dict())
    assert resumed.skipped == 3


def test_a_folder_of_unreadable_files_is_an_error_not_a_hang(tmp_path: Path) -> None:
    root = tmp_path / "garbage"
    root.mkdir()
    for i in range(40):
        (root / f"g{i:02d}.jpg").write_bytes(b"\xff\xd8 garbage, not a jpeg")
    cfg = tiny("dcgan-celeba", f"data={root}", "batch_size=8")
    with pytest.raises(DataError, match=r"no readable images in .*: 32 files tried, e\.g\. g00"):
        FolderBatches(cfg, CPU)


def test_an_epoch_without_one_readable_image_is_an_error(tmp_path: Path) -> None:
    """JPEGs cut short in their pixel data pass the probe but never decode."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(16):
        path = tmp_path / f"cut{i:02d}.jpg"
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path)
        path.write_bytes(path.read_bytes()[:-50])
    cfg = tiny("dcgan-celeba", f"data={tmp_path}", "batch_size=4", "image_size=16")
    batches = FolderBatches(cfg, CPU)  # the probe's header check passes
    with pytest.raises(DataError, match="no readable image in 4 batches in a row"):
        batches.next()
    assert batches.skipped == 16


def _png_claiming(path: Path, width: int, height: int) -> None:
    """A real small PNG whose IHDR (and its CRC) is patched to claim ``width`` x ``height``."""
    from PIL import Image

    Image.new("RGB", (4, 4)).save(path)
    raw = bytearray(path.read_bytes())
    raw[16:24] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    raw[29:33] = zlib.crc32(bytes(raw[12:29])).to_bytes(4, "big")
    path.write_bytes(bytes(raw))


def test_a_decompression_bomb_is_skipped_not_fatal(tmp_path: Path) -> None:
    from PIL import Image

    root = make_image_folder(tmp_path / "imgs", n=23, size=16)
    bomb = root / "huge.png"
    _png_claiming(bomb, 40_000, 40_000)
    with pytest.raises(Image.DecompressionBombError):
        Image.open(bomb)
    cfg = tiny("dcgan-celeba", f"data={root}", "batch_size=8", "image_size=16")
    batches = FolderBatches(cfg, CPU)
    seen = sum(batches.next()[0].shape[0] for _ in range(3))
    assert (seen, batches.skipped) == (23, 1)
    assert batches.files[batches.bad.pop()] == bomb


@pytest.mark.parametrize("workers", [0, 2])
def test_the_loader_leaves_the_global_rng_alone(tmp_path: Path, workers: int) -> None:
    root = make_image_folder(tmp_path / "imgs", n=8, size=16)
    cfg = tiny("dcgan-celeba", f"data={root}", "batch_size=4", "image_size=16",
               f"num_workers={workers}")
    batches = FolderBatches(cfg, CPU)
    before = torch.get_rng_state()
    batches.next()
    assert torch.equal(torch.get_rng_state(), before)


def test_workers_survive_stop_signals_from_other_processes(tmp_path: Path) -> None:
    """As from ``kill -TERM -- -PGID`` (timeout, systemd, Slurm) or Ctrl-C: only the main
    process may stop the workers."""
    root = make_image_folder(tmp_path / "imgs", n=24, size=16)
    cfg = tiny("dcgan-celeba", f"data={root}", "batch_size=4", "image_size=16",
               "num_workers=2")
    batches = FolderBatches(cfg, CPU)
    before = set(multiprocessing.active_children())
    batches.next()
    batches.next()  # batches come round-robin: both workers are set up
    workers = set(multiprocessing.active_children()) - before
    pids = [w.pid for w in workers]
    assert len(pids) == 2 and all(pid and pid > 1 for pid in pids)
    sender = ("import os, signal, sys\n"
              "for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):\n"
              "    for pid in sys.argv[1:]:\n"
              "        os.kill(int(pid), sig)\n")
    subprocess.run([sys.executable, "-c", sender, *map(str, pids)], check=True, timeout=30)
    time.sleep(0.3)
    assert all(w.is_alive() for w in workers)
    for _ in range(12):  # more than the 8 batches prefetched before the signals
        assert batches.next()[0].shape == (4, 3, 16, 16)


def test_a_run_holding_live_workers_still_exits(tmp_path: Path) -> None:
    """Workers deaf to SIGTERM must not hang the exit (multiprocessing would SIGTERM and wait)."""
    root = make_image_folder(tmp_path / "imgs", n=8, size=16)
    script = ("import sys, torch\n"
              "from gantui import config\n"
              "from gantui.data.sources import FolderBatches\n"
              "cfg = config.load('dcgan-celeba', [f'data={sys.argv[1]}', 'batch_size=4',\n"
              "                  'image_size=16', 'num_workers=2', 'epochs=0'])[1]\n"
              "BATCHES = FolderBatches(cfg, torch.device('cpu'))\n"
              "BATCHES.next()\n")
    done = subprocess.run([sys.executable, "-c", script, str(root)], timeout=60,
                          capture_output=True, text=True, cwd=Path(__file__).parents[1])
    assert done.returncode == 0, done.stderr


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
    from gantui.quality.metrics import ring_coverage

    batches = make_batches(tiny("ring-8", "batch_size=4000"), CPU)
    x, _ = batches.next()
    covered, quality = ring_coverage(x)
    assert covered == 8 and quality > 0.98  # 1 - exp(-9/2) of a 2-D Gaussian lies within 3 sigma
    assert torch.allclose(x.norm(dim=1).mean(), torch.tensor(2.0), atol=0.01)


def test_ring_coverage_counts_modes_like_veegan() -> None:
    from gantui.quality.metrics import ring_coverage

    modes = data.ring_modes()
    collapsed = modes[:1].repeat(100, 1)
    assert ring_coverage(collapsed) == (1, 1.0)
    far = modes * 1.5
    assert ring_coverage(far) == (0, 0.0)
    half = torch.cat([modes[:4], modes[:4] * 1.5])
    assert ring_coverage(half) == (4, 0.5)
