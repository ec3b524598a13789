"""A judge for any labelled data (#21 part 3): trained once per data set and cached by its
fingerprint with its held-out accuracy and floor; labelled runs scored by it under the MNIST
metric names; `gantui prepare` keeping a labelled folder's labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gantui import config
from gantui.data.batches import make_batches
from gantui.data.cache import CachedBatches
from gantui.data.sources import FolderBatches
from gantui.quality import judge as judgelib
from gantui.quality.judge import labelled_data, load_data_judge
from gantui.session import start, with_classes

from .conftest import cli
from .owndata import write_class_folders, write_fashion, write_npz

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["batch_size=8", "steps=4", "log_every=2", "sample_every=4", "checkpoint_every=4",
         "ngf=8", "ndf=8", "nz=8", "num_workers=0", "n_samples=12"]


def folder_cfg(root: Path, *extra: str) -> config.Config:
    """A conditional DCGAN on the class folders under ``root`` at 16x16 RGB."""
    _, cfg = config.load("dcgan-mnist-plain", [f"data={root}", "dataset=folder", "image_size=16",
                                         "channels=3", "conditioning=onehot", *SMALL, *extra])
    return with_classes(cfg)


def finished(session):
    session.join(120)
    assert not session.alive and not session.error, session.error
    assert session.state == "finished"
    return session


def test_a_labelled_folder_judge_is_trained_once_and_cached(tmp_path: Path) -> None:
    data = labelled_data(folder_cfg(write_class_folders(tmp_path / "shapes", per_class=20,
                                                        size=16)))
    assert data.images.shape == (60, 3, 16, 16) and data.class_names == ("blue", "green", "red")
    messages: list[str] = []
    judge, info, held_x, held_y = load_data_judge(data, tmp_path / "cache", messages.append)
    assert "training the judge once" in messages[0] and "floor" in messages[-1]
    assert (info.n_classes, info.channels, info.size) == (3, 3, 16)
    assert info.accuracy >= 0.9  # colours: easy
    assert math.isfinite(info.floor) and info.floor >= 0
    assert len(held_y) == info.n_holdout == 12 and held_x.shape[1:] == (3, 16, 16)
    (path,) = (tmp_path / "cache").glob("judge-data-v1-*.pt")
    assert info.path == str(path)
    stored = torch.load(path, weights_only=True)["info"]
    assert stored["accuracy"] == info.accuracy and stored["floor"] == info.floor
    # second time: from the cache, silently, the same judge and numbers
    again: list[str] = []
    judge2, info2, _, held_y2 = load_data_judge(data, tmp_path / "cache", again.append)
    assert again == [] and info2 == info and torch.equal(held_y2, held_y)
    x = judgelib.to_unit(held_x)
    assert torch.equal(judge(x), judge2(x))


def test_fashion_idx_judge_is_cached_by_the_data_fingerprint(tmp_path: Path) -> None:
    _, cfg = config.load("cdcgan-fashion", [f"data={write_fashion(tmp_path / 'f', n=150)}"])
    data = labelled_data(cfg)
    messages: list[str] = []
    _, info, _, _ = load_data_judge(data, tmp_path / "cache", messages.append)
    assert (info.n_classes, info.channels, info.size) == (10, 1, 28)
    assert 0 <= info.accuracy <= 1 and info.n_holdout == 30 and math.isfinite(info.floor)
    assert "Fashion-MNIST: 150 images" in messages[0]
    # the same files elsewhere: the same fingerprint, no training
    _, moved = config.load("cdcgan-fashion", [f"data={write_fashion(tmp_path / 'g', n=150)}"])
    again: list[str] = []
    assert load_data_judge(labelled_data(moved), tmp_path / "cache", again.append)[1] == info
    assert again == []


def test_a_conditional_run_is_scored_by_its_judge(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "shapes", per_class=12, size=16)
    cfg = folder_cfg(root, "eval_every=4", "eval_samples=30")
    session = finished(start(cfg, "own", runs_dir=tmp_path / "runs", device="cpu"))
    (line,) = (session.run_dir / "quality.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["primary"] == "cond_acc"
    names = {"judge_fd", "kid", "is", "classes", "class_entropy", "precision", "recall",
             "density", "coverage", "cond_acc", "judge_acc", "judge_floor", "rcfd"}
    assert names <= set(record["values"])
    assert 0 <= record["values"]["cond_acc"] <= 1 and record["values"]["classes"] <= 3
    result = cli("eval", str(session.run_dir), "-n", "30")
    assert result.returncode == 0, result.stderr
    assert "judge_floor" in result.stdout and "cond_acc" in result.stdout


def test_prepare_keeps_the_labels_and_a_conditional_run_reads_them(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "shapes", per_class=8, size=16)
    (root / "loose.png").write_bytes((root / "red" / "000.png").read_bytes())  # no class
    result = cli("prepare", str(root), "--size", "16", "--workers", "0")
    assert result.returncode == 0, result.stderr
    assert "labels of 3 classes (blue, green, red)" in result.stdout
    cfg = folder_cfg(root)
    cached = make_batches(cfg, torch.device("cpu"))
    assert isinstance(cached, CachedBatches) and "3 classes (blue, green, red)" in cached.note
    decoded = FolderBatches(cfg.replace(data_cache=False), torch.device("cpu"))
    try:
        for _ in range(4):  # the same batches as decoding the class folders, labels too
            (xc, yc), (xd, yd) = cached.next(), decoded.next()
            assert torch.equal(xc, xd) and torch.equal(yc, yd)
    finally:
        cached.close()
        decoded.close()
    session = finished(start(cfg, "own", runs_dir=tmp_path / "runs", device="cpu"))
    assert session.trainer.cfg.class_names == ("blue", "green", "red")
    assert "from the prepared cache" in session.trainer.batches.note
    saved = config.read_toml(session.run_dir / "config.toml")
    assert saved["class_names"] == ["blue", "green", "red"] and saved["n_classes"] == 3


def test_labelled_data_of_one_class_is_one_line(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "a.npz", n=32, side=16, channels=3)
    arrays = dict(np.load(data))
    np.savez(data, x=arrays["x"], y=np.zeros(32, np.int64))  # every image in class 0
    _, cfg = config.load("dcgan-mnist-plain", [f"data={data}", "dataset=array", "image_size=16",
                                         "channels=3", *SMALL, "eval_every=0"])
    session = finished(start(cfg, "own", runs_dir=tmp_path / "runs", device="cpu"))
    result = cli("eval", str(session.run_dir), "-n", "20")
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "a judge needs at least 2 classes; the labels hold 1 (0)" in result.stderr
    assert "Traceback" not in result.stderr
