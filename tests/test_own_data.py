"""Your own data: class-labelled folders, CIFAR-10, Fashion-MNIST and arrays in their standard
on-disk formats (written here at toy size), never downloaded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from gantui import config
from gantui import events as ev
from gantui.cli import app
from gantui.data import datasets
from gantui.data.sources import DataError
from gantui.quality.evaluate import Evaluator
from gantui.session import start

from .owndata import write_cifar10, write_class_folders, write_fashion, write_npz

SMALL = ["batch_size=8", "steps=4", "log_every=2", "sample_every=4", "checkpoint_every=4",
         "ngf=8", "ndf=8", "nz=8", "num_workers=0", "eval_every=0"]


def finish(session) -> None:
    session.join(120)
    assert not session.alive and not session.error, session.error
    assert session.state == "finished"


def train_cli(tmp_path: Path, *args: str) -> object:
    return CliRunner().invoke(app, ["train", "--no-ui", "--device", "cpu", "--runs-dir",
                                    str(tmp_path / "runs"), *args])


def test_cifar10_reader_reads_the_pickles_and_their_names(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c", per_batch=6)
    for where in (root, root / "cifar-10-batches-py"):  # the parent or the folder itself
        found = datasets.read("cifar10", str(where))
        assert found.images.shape == (30, 3, 32, 32) and found.images.dtype == torch.uint8
        assert found.labels.shape == (30,) and found.class_names[3] == "cat"


def test_cifar10_missing_or_truncated_batch_is_one_line(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c", per_batch=6)
    batch = root / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:200])
    result = train_cli(tmp_path, "--preset", "dcgan-cifar10", "--data", str(root))
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "data_batch_3 is truncated" in result.stderr
    batch.unlink()
    result = train_cli(tmp_path, "--preset", "dcgan-cifar10", "--data", str(root))
    assert result.exit_code == 1 and "data_batch_3 is missing" in result.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(("preset", "what"), [("dcgan-cifar10", "cifar-10-batches-py"),
                                              ("sngan-cifar10", "cifar-10-batches-py"),
                                              ("cdcgan-fashion", "train-images-idx3-ubyte")])
def test_presets_say_what_to_pass_when_the_data_is_missing(preset: str, what: str,
                                                           tmp_path: Path) -> None:
    result = train_cli(tmp_path, "--preset", preset)
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "needs --data" in result.stderr
    assert what in result.stderr and "nothing is downloaded" in result.stderr


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_idx_files_train_a_conditional_run_with_named_classes(gz: bool,
                                                                      tmp_path: Path) -> None:
    root = write_fashion(tmp_path / "f", n=40, gz=gz)
    _, cfg = config.load("cdcgan-fashion", [f"data={root}", *SMALL, "n_samples=20"])
    session = start(cfg, "cdcgan-fashion", runs_dir=tmp_path / "runs", device="cpu")
    finish(session)
    trained = session.trainer.cfg
    assert trained.class_names == datasets.FASHION_CLASSES and trained.n_classes == 10
    saved = config.read_toml(session.run_dir / "config.toml")
    assert saved["class_names"][9] == "Ankle boot"


def test_truncated_idx_file_is_refused(tmp_path: Path) -> None:
    root = write_fashion(tmp_path / "f", n=20)
    images = root / "FashionMNIST" / "raw" / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    with pytest.raises(DataError, match="is truncated"):
        datasets.read("fashion", str(root))


def test_labelled_folders_train_conditionally_with_their_names(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "shapes", per_class=8)
    (root / "red" / "broken.png").write_bytes(b"not a png")
    _, cfg = config.load("dcgan-mnist-plain", [f"data={root}", "dataset=folder", "image_size=16",
                                         "channels=3", "conditioning=onehot", *SMALL,
                                         "n_samples=12"])
    session = start(cfg, "own", runs_dir=tmp_path / "runs", device="cpu")
    finish(session)
    trainer = session.trainer
    assert trainer.cfg.class_names == ("blue", "green", "red") and trainer.cfg.n_classes == 3
    assert trainer.previews.fixed_labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # a row per class
    assert "3 classes (blue, green, red)" in trainer.batches.note
    x, y = trainer.batches.next()
    assert x.shape[1:] == (3, 16, 16) and y is not None and len(y) == len(x)
    # each label matches its image's colour (class folders are blue, green, red)
    for image, label in zip(x, y, strict=True):
        assert int(image.amax(dim=(1, 2)).argmax()) == {0: 2, 1: 1, 2: 0}[int(label)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda r: write_class_folders(r, per_class=4, classes=("red",)), "found 1 (red)"),
    (lambda r: (write_class_folders(r, per_class=4), (r / "empty").mkdir()),
     "class folder empty under"),
])
def test_bad_class_folders_are_one_line(make, message: str, tmp_path: Path) -> None:
    root = tmp_path / "shapes"
    make(root)
    result = train_cli(tmp_path, "--data", str(root), "--set", "dataset=folder", "--set",
                       "channels=3", "--set", "image_size=16", "--set", "conditioning=onehot",
                       *[f"--set={s}" for s in SMALL])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert message in result.stderr and "Traceback" not in result.stderr


def test_npz_with_labels_trains_conditionally(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "a.npz", n=32, side=16, channels=3)
    _, cfg = config.load("dcgan-mnist-plain", [f"data={data}", "dataset=array", "image_size=16",
                                         "channels=3", "conditioning=embedding", *SMALL])
    session = start(cfg, "own", runs_dir=tmp_path / "runs", device="cpu")
    finish(session)
    assert session.trainer.cfg.n_classes == 4
    assert session.trainer.cfg.class_names == ("0", "1", "2", "3")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dtype": "int64"}, "images of dtype int64; expected uint8"),
    ({"dtype": "float32"}, "float images must be in [0, 1]"),
    ({"channels": 4}, "images must be (N, H, W) or (N, H, W, C)"),
])
def test_bad_arrays_are_one_line(kwargs: dict, message: str, tmp_path: Path) -> None:
    data = write_npz(tmp_path / "a.npz", **kwargs)
    result = train_cli(tmp_path, "--data", str(data), "--set", "dataset=array", "--set",
                       "image_size=16", *[f"--set={s}" for s in SMALL])
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    assert message in result.stderr


def test_wrong_rank_npy_and_grey_floats(tmp_path: Path) -> None:
    np.save(tmp_path / "flat.npy", np.zeros((10, 256), np.uint8))
    with pytest.raises(DataError, match="images must be"):
        datasets.read("array", str(tmp_path / "flat.npy"))
    np.save(tmp_path / "ok.npy", np.full((10, 12, 12), 0.5, np.float32))
    found = datasets.read("array", str(tmp_path / "ok.npy"))
    assert found.images.shape == (10, 1, 12, 12) and int(found.images[0, 0, 0, 0]) == 128


def test_evaluation_scores_labelled_data_by_its_judge_and_like_a_folder(tmp_path: Path) -> None:
    root = write_cifar10(tmp_path / "c", per_batch=8)
    _, cfg = config.load("dcgan-cifar10", [f"data={root}", "ngf=8", "ndf=8"])
    from gantui.models.builtin import build_models

    G, _ = build_models(cfg)
    evaluator = Evaluator(cfg, torch.device("cpu"), n=20, cache_dir=tmp_path / "cache")
    assert evaluator.kind == "labelled" and evaluator.judge_info.size == 32
    assert len(evaluator.reference.images) == evaluator.judge_info.n_holdout  # held-out reals
    score = evaluator.evaluate(G, step=1)
    assert score.primary == "judge_fd" and np.isfinite(score.values["rcfd"])


def test_model_args_and_class_names_reach_config_toml_and_run_started(tmp_path: Path) -> None:
    root = write_class_folders(tmp_path / "shapes", per_class=8)
    _, cfg = config.load("dcgan-mnist-plain", [f"data={root}", "dataset=folder", "image_size=16",
                                         "channels=3", "conditioning=onehot", *SMALL,
                                         "model_args.note=unused", "steps=2"])
    session = start(cfg, "own", runs_dir=tmp_path / "runs", device="cpu")
    session.join(120)
    saved = config.read_toml(session.run_dir / "config.toml")
    assert saved["model_args"] == {"note": "unused"}
    assert saved["class_names"] == ["blue", "green", "red"]
    started = [e for e in session.queue.drain() if isinstance(e, ev.RunStarted)]  # the dashboard's
    assert started and started[0].config["class_names"] == ["blue", "green", "red"]
    assert started[0].config["model_args"] == {"note": "unused"}
