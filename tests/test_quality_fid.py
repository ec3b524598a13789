"""Folder scores: rcfd always, Inception FID/KID only with torch-fidelity and local weights."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gantui import config
from gantui.data.sources import ImageFolder, find_images
from gantui.quality import fid as fidlib
from gantui.quality.evaluate import Evaluator

pytestmark = pytest.mark.usefixtures("one_thread")


def shapes_folder(root: Path, n: int = 200) -> Path:
    """``n`` images of a coloured disc on a gradient, 48x40 (not square), PNG and JPEG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48]
    for i in range(n):
        top, bottom = rng.integers(0, 255, 3), rng.integers(0, 255, 3)
        t = (yy / 39.0)[..., None]
        img = (1 - t) * top + t * bottom
        cy, cx, r = rng.integers(10, 30), rng.integers(12, 36), rng.integers(5, 12)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = rng.integers(0, 255, 3)
        sub = root / f"part{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.astype(np.uint8)).save(sub / f"img{i:03d}.{'png' if i % 3 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return shapes_folder(tmp_path_factory.mktemp("shapes"))


@pytest.fixture
def no_hub_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache, so no Inception weights are found there."""
    hub = tmp_path / "hub"
    (hub / "checkpoints").mkdir(parents=True)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def folder_cfg(root: Path, *extra: str) -> config.Config:
    return config.load("dcgan-celeba", [f"data={root}", "image_size=32", "num_workers=0",
                                        *extra])[1]


class Images(nn.Module):
    """A folder "generator" that returns given uint8 images in turn, ignoring z."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = fidlib.from_uint8(images)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.images[torch.arange(len(z)) % len(self.images)]


def decode(files: list[Path], size: int = 32, channels: int = 3) -> torch.Tensor:
    ds = ImageFolder(files, size, channels)
    return torch.stack([ds[(i, 0, 0)][0] for i in range(len(files))])


# ---- rcfd ---------------------------------------------------------------------------------------

def test_random_features_are_fixed_and_spare_the_global_rng() -> None:
    before = torch.get_rng_state()
    a, b = fidlib.RandomConvFeatures(), fidlib.RandomConvFeatures()
    assert torch.equal(torch.get_rng_state(), before)
    x = torch.rand(4, 3, 32, 32) * 2 - 1
    assert torch.equal(a(x), b(x))
    assert a(x).shape == (4, a.dim) and a.dim == 864
    grey = x[:, :1]
    assert torch.equal(a(grey), a(grey.expand(-1, 3, -1, -1)))
    assert a(torch.rand(2, 3, 64, 64)).shape == (2, a.dim)


def test_folder_without_weights_scores_rcfd_and_says_so_once(folder: Path, tmp_path: Path,
                                                            no_hub_weights: Path) -> None:
    messages: list[str] = []
    before = torch.get_rng_state()
    ev = Evaluator(folder_cfg(folder), torch.device("cpu"), n=100, cache_dir=tmp_path,
                   log=messages.append)
    assert ev.kind == "folder" and not ev.has_fid
    files = find_images(folder)
    assert len(ev.reference.images) == 100 and ev.reference.n_files == 200
    others = Images(decode(files[1::2]))  # the images not picked as the reference
    grey = Images(torch.full((1, 3, 32, 32), 128, dtype=torch.uint8))
    noise = Images(torch.randint(0, 256, (100, 3, 32, 32), dtype=torch.uint8,
                                 generator=torch.Generator().manual_seed(0)))
    good, flat, noisy = (ev.evaluate(g, step=1) for g in (others, grey, noise))
    assert torch.equal(torch.get_rng_state(), before)
    assert good.primary == "rcfd" and set(good.values) == {"rcfd"}
    assert flat.values["rcfd"] > 5 * good.values["rcfd"]
    assert noisy.values["rcfd"] > 4 * good.values["rcfd"]
    assert len(messages) == 1
    if importlib.util.find_spec("torch_fidelity") is None:  # the fid extra is not installed
        assert messages[0].startswith("FID off: torch-fidelity is not installed")
    else:
        assert messages[0].startswith("FID off: no Inception weights")
        assert str(no_hub_weights / "checkpoints") in messages[0]


def test_folder_scores_without_torch_fidelity(folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    weights = tmp_path / "weights.pth"
    weights.write_bytes(b"never read")
    monkeypatch.setitem(sys.modules, "torch_fidelity", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "torch_fidelity.feature_extractor_inceptionv3", None)
    messages: list[str] = []
    ev = Evaluator(folder_cfg(folder), torch.device("cpu"), n=20, cache_dir=tmp_path,
                   fid_weights=str(weights), log=messages.append)
    score = ev.evaluate(Images(ev.reference.images), step=0)
    assert set(score.values) == {"rcfd"} and score.values["rcfd"] < 1e-6  # its own reference
    assert messages == ["FID off: torch-fidelity is not installed (pip install 'gantui[fid]'); "
                        "scoring by rcfd only"]


def test_a_missing_weights_path_is_named(folder: Path, tmp_path: Path) -> None:
    messages: list[str] = []
    ev = Evaluator(folder_cfg(folder), torch.device("cpu"), n=10, cache_dir=tmp_path,
                   fid_weights=str(tmp_path / "nope.pth"), log=messages.append)
    if "not installed" in messages[0]:
        pytest.skip("torch-fidelity is not installed")
    assert not ev.has_fid
    assert messages == [f"FID off: Inception weights {tmp_path / 'nope.pth'} not found; "
                        f"scoring by rcfd only"]


def test_unloadable_weights_are_refused_with_a_reason(folder: Path, tmp_path: Path) -> None:
    pytest.importorskip("torch_fidelity")
    bad = tmp_path / fidlib.INCEPTION_FILES[0]
    torch.save({"something": torch.zeros(1)}, bad)
    messages: list[str] = []
    ev = Evaluator(folder_cfg(folder), torch.device("cpu"), n=10, cache_dir=tmp_path,
                   fid_weights=str(bad), log=messages.append)
    assert not ev.has_fid
    assert len(messages) == 1 and "do not load" in messages[0]


def test_grey_folders_score_too(folder: Path, tmp_path: Path, no_hub_weights: Path) -> None:
    ev = Evaluator(folder_cfg(folder, "channels=1"), torch.device("cpu"), n=10,
                   cache_dir=tmp_path)
    assert ev.reference.images.shape == (10, 1, 32, 32)
    assert ev.evaluate(Images(ev.reference.images), step=0).values["rcfd"] < 1e-6


# ---- Inception through torch-fidelity, with random weights -----------------------------------

@pytest.fixture(scope="module")
def fake_inception(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding randomly initialised InceptionV3 weights under the real name."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    cls = fe.FeatureExtractorInceptionV3
    with pytest.MonkeyPatch.context() as mp, torch.random.fork_rng(devices=[]):
        mp.setattr(fe, "load_state_dict_from_url", lambda *args, **kwargs: {})
        mp.setattr(cls, "load_state_dict", lambda self, state, *args, **kwargs: None)
        state = cls("inception-v3-compat", ["2048"]).state_dict()
    hub = tmp_path_factory.mktemp("hub")
    (hub / "checkpoints").mkdir()
    torch.save(state, hub / "checkpoints" / fidlib.INCEPTION_FILES[0])
    return hub


def test_fid_and_kid_with_local_weights_and_cached_real_features(
        folder: Path, tmp_path: Path, fake_inception: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import torch_fidelity.feature_extractor_inceptionv3 as fe

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download Inception weights")

    monkeypatch.setattr(fe, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(fake_inception))
    cfg = folder_cfg(folder)
    messages: list[str] = []
    before = torch.get_rng_state()
    ev = Evaluator(cfg, torch.device("cpu"), n=10, cache_dir=tmp_path, log=messages.append)
    assert ev.has_fid
    assert len(messages) == 1 and messages[0].startswith("computing Inception features")
    assert len(list(tmp_path.glob("inception-real-*.pt"))) == 1
    score = ev.evaluate(Images(ev.reference.images), step=3)
    assert torch.equal(torch.get_rng_state(), before)
    assert score.primary == "fid"
    assert {"fid", "kid", "kid_std", "rcfd"} <= set(score.values)
    assert score.values["fid"] < 1e-3  # its own reference: the floor
    # a second evaluator for the same folder reads the real features from the cache
    again: list[str] = []
    ev2 = Evaluator(cfg, torch.device("cpu"), n=10, cache_dir=tmp_path, log=again.append)
    assert ev2.has_fid and again == []
    assert torch.allclose(ev2.real_inception, ev.real_inception)
