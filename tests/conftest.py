"""Shared toy-size fixtures: real pieces, tiny sizes, the CPU."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from gantui import config
from gantui.config import Config

TINY_RING = [
    "g_hidden=32,32", "d_hidden=32,32", "batch_size=64", "steps=60", "log_every=10",
    "sample_every=20", "checkpoint_every=30", "n_samples=64",
]


def tiny(preset: str = "ring-8", *extra: str) -> Config:
    """A preset shrunk to toy size; ``extra`` are further ``KEY=VALUE`` overrides."""
    sets = list(TINY_RING) if preset == "ring-8" else [
        "ngf=8", "ndf=8", "g_hidden=32,32", "d_hidden=32,32", "nz=8", "batch_size=16",
        "steps=6", "log_every=2", "sample_every=3", "checkpoint_every=3", "n_samples=20",
        "num_workers=0", "epochs=0",
    ]
    return config.load(preset, [*sets, *extra])[1]


@pytest.fixture(scope="session", autouse=True)
def gantui_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (the digit judge, Inception statistics) for the whole session, in a fresh
    folder: tests never read or write the user's ``~/.cache/gantui``. Subprocesses inherit it."""
    path = tmp_path_factory.mktemp("gantui-cache")
    os.environ["GANTUI_CACHE"] = str(path)
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Two torch threads on two shared cores thrash; one is steady and gives the same numbers.
    For modules that measure: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_cfg() -> Config:
    """ring-8 with tiny MLPs: 60 steps in well under a second on the CPU."""
    return tiny()


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """A fresh runs directory."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


def make_image_folder(root: Path, n: int = 24, size: int = 40, bad: int = 0) -> Path:
    """Write ``n`` small random RGB images (nested, mixed formats) plus ``bad`` broken files."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 255, (size, size + 8 * (i % 2), 3), dtype=np.uint8)
        Image.fromarray(array).save(sub / f"img{i:03d}.{'png' if i % 2 else 'jpg'}")
    for i in range(bad):
        (root / f"broken{i}.jpg").write_bytes(b"not a jpeg at all")
    return root


async def until(pilot, condition, timeout: float = 30.0) -> None:
    """Let a Textual app run until ``condition()`` holds (fails after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


def scripted(events: list) -> Callable[[], list]:
    """A dashboard ``drain`` that hands over ``events`` once, then nothing."""
    queue = list(events)

    def drain() -> list:
        out = list(queue)
        queue.clear()
        return out

    return drain
