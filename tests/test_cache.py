"""`gantui prepare`: the image-folder cache, its match with the folder, training from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from gantui.data import cache
from gantui.data.batches import make_batches
from gantui.data.sources import DataError, FolderBatches

from .conftest import cli, make_image_folder, tiny
from .test_cli import gantui

CPU = torch.device("cpu")


@pytest.fixture
def base(tmp_path: Path) -> Path:
    """A cache root of this test's own (prepared folders are keyed by path anyway)."""
    return tmp_path / "cache"


def folder_cfg(root: Path, *extra: str):
    return tiny("dcgan-celeba", f"data={root}", "batch_size=8", "image_size=32", *extra)


def test_cached_batches_equal_decoded_batches_bit_for_bit(tmp_path: Path,
                                                          monkeypatch) -> None:
    monkeypatch.setenv("GANTUI_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "faces", n=30, size=40, bad=3)
    result = cache.prepare(root, 32, 3, workers=0)
    assert (result.files, result.unreadable, result.resumed_at) == (33, 3, 0)
    cfg = folder_cfg(root)
    decoded = FolderBatches(cfg, CPU)
    cached = make_batches(cfg, CPU)
    assert isinstance(cached, cache.CachedBatches)
    assert "from the prepared cache" in cached.note and "3 unreadable" in cached.note
    for _ in range(9):  # over two epoch boundaries, with the broken files in some batches
        a, _ = decoded.next()
        b, _ = cached.next()
        assert torch.equal(a, b)
    assert decoded.state_dict() == cached.state_dict() and cached.skipped >= 1
    # resume mid-epoch: the same next batch from a fresh stream loaded with the state
    state = cached.state_dict()
    expected, _ = cached.next()
    fresh = make_batches(cfg, CPU)
    fresh.load_state_dict(state)
    again, _ = fresh.next()
    assert torch.equal(expected, again)
    for stream in (decoded, cached, fresh):
        stream.close()
    # data_cache=false decodes the files again
    assert isinstance(make_batches(folder_cfg(root, "data_cache=false"), CPU), FolderBatches)


def test_a_changed_folder_is_refused_with_the_fix(tmp_path: Path, base: Path) -> None:
    root = make_image_folder(tmp_path / "faces", n=12, size=40)
    cache.prepare(root, 32, 3, workers=0, base=base)
    assert cache.open_prepared(root, 32, 3, base=base) is not None
    assert cache.open_prepared(root, 64, 3, base=base) is None  # another size: no cache
    extra = root / "part0" / "new.png"
    extra.write_bytes((root / "part1" / "img001.png").read_bytes())
    (root / "part2" / "img002.jpg").unlink()
    with pytest.raises(DataError, match=r"no longer matches .*1 added, 1 removed.*"
                                        r"gantui prepare .* --size 32.*data_cache=false"):
        cache.open_prepared(root, 32, 3, base=base)
    extra.unlink()
    (root / "part2" / "img002.jpg").write_bytes(b"x")  # same name, other bytes
    with pytest.raises(DataError, match=r"\(1 changed since"):
        cache.open_prepared(root, 32, 3, base=base)


def test_damaged_or_hostile_cache_files_give_one_line(tmp_path: Path, base: Path) -> None:
    root = make_image_folder(tmp_path / "faces", n=10, size=40)
    result = cache.prepare(root, 32, 3, workers=0, base=base)
    manifest = result.path / "manifest.json"
    good = manifest.read_bytes()
    for bad in (b"{", b"[]", json.dumps({"version": 1, "shape": [10, 3, 32, 32],
                                          "files": [["a", -1, 0]] * 10}).encode(),
                json.dumps({"version": 1, "shape": [2**50, 3, 32, 32], "files": []}).encode()):
        manifest.write_bytes(bad)
        with pytest.raises(DataError, match="damaged or from another gantui"):
            cache.open_prepared(root, 32, 3, base=base)
    manifest.write_bytes(good)
    (result.path / "ok.u8").write_bytes(b"\x01")
    with pytest.raises(DataError, match="damaged"):
        cache.open_prepared(root, 32, 3, base=base)


def test_prepare_is_resumable_after_a_kill_and_refused_while_incomplete(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_image_folder(tmp_path / "faces", n=600, size=64)
    env = {**os.environ, "GANTUI_CACHE": str(tmp_path / "cache")}
    args = [sys.executable, "-m", "gantui", "prepare", str(root), "--size", "32",
            "--workers", "0"]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    where = cache.cache_dir(root, 32, 3, tmp_path / "cache")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once the first chunk is recorded
        progress = where / "progress.json"
        if progress.exists() and json.loads(progress.read_text() or "{}").get("done", 0) > 0:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    done = json.loads((where / "progress.json").read_text())["done"]
    assert 0 < done < 600
    with pytest.raises(DataError, match=rf"incomplete \({done:,} of 600"):
        cache.open_prepared(root, 32, 3, base=tmp_path / "cache")
    monkeypatch.setenv("GANTUI_CACHE", str(tmp_path / "cache"))
    out = cli(*args[3:])  # the resumed prepare: in this process
    assert out.returncode == 0, out.stderr
    assert f"resumed at {done:,}" in out.stdout and "prepared 600 images" in out.stdout
    prepared = cache.open_prepared(root, 32, 3, base=tmp_path / "cache")
    assert prepared is not None and prepared.ok.all()
    # what the resumed prepare wrote equals a prepare from scratch
    fresh = cache.prepare(root, 32, 3, workers=0, base=tmp_path / "fresh")
    again = cache.open_prepared(root, 32, 3, base=tmp_path / "fresh")
    assert fresh.resumed_at == 0 and np.array_equal(again.images, prepared.images)


@pytest.mark.slow  # training with loader workers in a child process
def test_prepare_and_train_from_the_cache_through_the_cli(tmp_path: Path) -> None:
    root = make_image_folder(tmp_path / "faces", n=40, size=48, bad=2)
    out = cli("prepare", str(root), "--size", "32", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "prepared 42 images" in out.stdout and "2 unreadable" in out.stdout
    # a subprocess: the loader's worker processes start from a fresh interpreter
    train = gantui("train", "--no-ui", "--preset", "dcgan-celeba", "--data", str(root),
                   "--device", "cpu", "--name", "c", "--set", "image_size=32",
                   "--set", "ngf=8", "--set", "ndf=8", "--set", "batch_size=8",
                   "--set", "steps=6", "--set", "epochs=0", "--set", "log_every=3",
                   "--set", "eval_every=0", cwd=tmp_path)
    assert train.returncode == 0, train.stderr
    assert "from the prepared cache" in train.stdout
    (root / "more.png").write_bytes((root / "part1" / "img001.png").read_bytes())
    refused = cli("train", "--no-ui", "--preset", "dcgan-celeba", "--data", str(root),
                  "--device", "cpu", "--set", "image_size=32", cwd=tmp_path)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert refused.stderr.count("\n") == 1 and "no longer matches" in refused.stderr
    for bad in (["--size", "2"], ["--channels", "2"], ["--size", "32", str(tmp_path / "x")]):
        args = ["prepare", *([str(root)] if len(bad) == 2 else []), *bad]
        failed = cli(*args, cwd=tmp_path)
        assert failed.returncode != 0 and "Traceback" not in failed.stderr
