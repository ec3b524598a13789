"""Self-conditioning on clusters of the training images (``clusters``): the balanced k-means
split, what G and D are given in real training steps, the diagnostics with clusters, exact
resume with the split as trained, and the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gantui import config
from gantui import events as ev
from gantui.data import sources
from gantui.data.clusters import balanced, fit
from gantui.data.clusters import refitted as refitted_split
from gantui.errors import GantuiError
from gantui.files import read_toml_dict
from gantui.headless import follow
from gantui.models.latent import code, code_rows, latent, width, with_code
from gantui.quality import clustered
from gantui.run.follow import grid_nrow
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start
from gantui.studies import sampling

from .conftest import cli, tiny


def test_balanced_fills_every_cluster_evenly_and_prefers_near_ones() -> None:
    rng = np.random.default_rng(0)
    d = rng.random((103, 7))
    labels = balanced(d)
    sizes = np.bincount(labels, minlength=7)
    assert labels.min() >= 0 and sizes.sum() == 103
    assert sizes.min() == 103 // 7 and sizes.max() == math.ceil(103 / 7)
    for n, k in ((1000, 300), (4000, 30)):  # every cluster within one of the others
        sizes = np.bincount(balanced(rng.random((n, k))), minlength=k)
        assert sizes.min() == n // k and sizes.max() <= n // k + 1
    # two clusters wanted by everyone, one by no one: the last still gets its share
    assert sorted(np.bincount(balanced(np.array([[0., 1, 2], [0, 1, 2], [1, 0, 2],
                                                 [1, 0, 2]])), minlength=3)) == [1, 1, 2]
    # with room for everyone at its nearest, nothing moves
    near = np.tile(np.arange(4), 25)
    d = np.ones((100, 4))
    d[np.arange(100), near] = 0.0
    assert np.array_equal(balanced(d), near)
    # three points want cluster 0, which has room for two: the farthest goes elsewhere
    d = np.array([[0.0, 5.0], [0.1, 5.0], [0.3, 0.4], [9.0, 0.0]])
    assert balanced(d).tolist() == [0, 0, 1, 1]


def test_fit_finds_separate_groups_of_images_without_labels() -> None:
    gen = torch.Generator().manual_seed(0)
    groups = []
    for g in range(3):  # three shapes: a bright square in a different corner each
        x = torch.full((40, 1, 8, 8), -1.0)
        x[:, :, (g * 3):(g * 3) + 3, (g * 3):(g * 3) + 3] = 1.0
        groups.append(x + 0.1 * torch.randn(x.shape, generator=gen))
    images = torch.cat(groups)
    clusters, labels = fit(images, 3, seed=0)
    truth = torch.arange(3).repeat_interleave(40)
    assert clusters.k == 3 and labels.shape == (120,)
    for g in range(3):  # each group is one cluster, whatever its number
        assert labels[truth == g].unique().numel() == 1
    assert labels.unique().numel() == 3
    assert torch.equal(clusters.assign(images), labels)  # new images go to the nearest centre
    again, labels2 = fit(images, 3, seed=0)
    assert torch.equal(labels, labels2) and np.array_equal(clusters.centres, again.centres)


def test_a_refit_moves_the_centres_onto_the_equal_split_and_tightens_it() -> None:
    """``cluster_refit``: each round's centres are the means of the last equal split; on the
    training digits the split stays equal and its clusters lie closer to their centres."""
    split = sources.mnist_split(tiny("dcgan-mnist"))
    digits = split.train_images.float().div(127.5).sub(1.0)
    first, labels = fit(digits, 50, seed=0)
    once, _ = refitted_split(first, digits, labels, 1)
    coords = first.project(digits)
    means = np.stack([coords[labels.numpy() == c].mean(0) for c in range(50)])
    assert np.allclose(once.centres, means)
    refitted, labels20 = refitted_split(first, digits, labels, 20)
    assert torch.equal(torch.bincount(labels20), torch.full((50,), 80))

    def spread(clusters, labels) -> float:  # mean squared distance to the own centre
        return float(clusters.distances(digits)[np.arange(len(labels)), labels.numpy()].mean())

    assert spread(refitted, labels20) < spread(first, labels)
    # the digits' classes, read by this test only: the refitted clusters are purer (seed 0)
    truth = split.train_labels.numpy()

    def purity(labels) -> float:
        lab = labels.numpy()
        return sum(np.bincount(truth[lab == c]).max() for c in range(50)) / len(lab)

    assert purity(labels20) > purity(labels) + 0.01, (purity(labels20), purity(labels))


@pytest.mark.parametrize("preset, sets, message", [
    ("dcgan-mnist-plain", ["clusters=1"], "clusters must be 0 .off. or at least 2"),
    ("dcgan-mnist-plain", ["clusters=-3"], "clusters must be >= 0"),
    ("cdcgan-mnist", ["clusters=10"], "clusters needs an unconditional model"),
    ("dcgan-mnist-plain", ["clusters=10", "info_codes=10"], "choose one"),
    ("ring-8", ["clusters=8"], "clusters needs data held in memory"),
    (None, ["clusters=50", "conditioning=onehot"], "clusters needs an unconditional model"),
    (None, ["clusters=50", "dataset=folder"], "clusters needs data held in memory"),
])
def test_bad_cluster_settings_are_refused(preset: str | None, sets: list[str],
                                          message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.load(preset, sets)


@pytest.mark.parametrize("sets", [
    ["model=my_gan.py"], ["encoder=true", "conditioning=onehot"], ["conditioning=onehot"],
    ["info_codes=10"],
    ["dataset=folder", "data=faces"],
])
def test_the_default_presets_clusters_give_way_to_a_set_that_rules_them_out(
        sets: list[str]) -> None:
    """`gantui train --set model=my_gan.py` (or labels, or a folder) runs on the default
    preset as it did before that preset clustered; the rest of the preset stays."""
    name, cfg = config.load(None, sets)
    assert name == "dcgan-mnist" and cfg.clusters == 0 and cfg.ema == 0.999
    assert config.load(None, [])[1].clusters == 50
    assert config.load(None, ["dataset=fashion"])[1].clusters == 50  # held in memory: kept


def test_too_many_clusters_is_one_line_and_leaves_no_run(runs_dir: Path) -> None:
    result = cli("train", "--preset", "dcgan-mnist-plain", "--no-ui", "--device", "cpu",
                 "--runs-dir", str(runs_dir), "--set", "train_digits=40",
                 "--set", "clusters=50", "--set", "batch_size=8")
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "clusters 50 exceeds its 40 images" in said
    assert "Traceback" not in said and not list(runs_dir.iterdir())


def test_a_clustered_run_conditions_d_on_clusters_and_scores_unconditionally(
        trained_judge, runs_dir: Path) -> None:
    cfg = tiny("dcgan-mnist-plain", "clusters=5", "steps=8", "eval_every=8", "eval_samples=200",
               "n_samples=20")
    session = start(cfg, "dcgan-mnist-plain", runs_dir=runs_dir, device="cpu")
    events = follow(session, 180)
    assert session.state == "finished" and not session.error
    t = session.trainer
    assert width(cfg) == cfg.nz + 5
    assert t.D.net[0].in_channels == 1 + 5  # the image and a map per cluster
    assert "k-means split it into 5 clusters" in t.batches.note
    labels = t.batches.labels
    assert torch.bincount(labels, minlength=5).tolist() == [800] * 5  # 4,000 digits evenly
    x, y = t.batches.next()
    assert y is not None and y.shape == (cfg.batch_size,) and int(y.max()) < 5
    # in a training step D is told each real digit's cluster and each fake's code
    seen: list[torch.Tensor] = []
    hook = t.D.register_forward_pre_hook(lambda _m, args: seen.append(args[1]))
    state = torch.get_rng_state(), t.noise.get_state()
    t.d_step()
    hook.remove()
    torch.set_rng_state(state[0])
    t.noise.set_state(state[1])
    z, _ = t._noise(cfg.batch_size)
    assert len(seen) == 2 and seen[0].shape == (cfg.batch_size,)
    assert torch.equal(seen[1], code(cfg, z))
    # scored as an unconditional run: class shares, D's accuracy on real digits, no cond_acc
    quality = [e for e in events if isinstance(e, ev.Quality)][-1].values
    assert "cond_acc" not in quality and "class_0" in quality
    assert 0.0 <= quality["d_acc_held"] <= 1.0 and 0.0 <= quality["d_acc_train"] <= 1.0
    # previews: a row per cluster, and followers cut the stored grid the same way
    assert code(cfg, t.previews.fixed_noise).tolist() == [k for k in range(5) for _ in range(4)]
    assert grid_nrow(read_toml_dict(session.run_dir / "config.toml")) == t.previews.nrow == 4
    state = load_checkpoint_file(RunStore.open(session.run_dir).checkpoint_paths()[-1])
    assert torch.equal(state["data"]["clusters"].long(), labels)
    result = cli("sample", str(session.run_dir), "--code", "4", "-n", "4")
    assert result.returncode == 0, result.stderr
    # eval reads G per code against each cluster's own digits, on the split it trained on
    result = cli("eval", str(session.run_dir), "-n", "100", "--json")
    assert result.returncode == 0, result.stderr
    reading = json.loads(result.stdout)["clusters"]
    assert reading["per_code"] == clustered.PER_CODE and sum(reading["leads"]) == 5
    apart = [row["apart"] for row in reading["furthest"]]
    assert len(apart) == 5 and apart == sorted(apart, reverse=True)
    for row in reading["furthest"]:  # both rows are shares, and the distance is theirs
        assert math.isclose(sum(row["data"]), 1, abs_tol=1e-3)
        assert math.isclose(sum(row["fake"]), 1, abs_tol=1e-3)
        gap = 0.5 * sum(abs(a - b) for a, b in zip(row["data"], row["fake"], strict=True))
        assert math.isclose(row["apart"], gap, abs_tol=2e-3)
    assert 0.0 < reading["lead_data"] <= 1.0 and 0.0 <= reading["lead_fake"] <= 1.0
    images, split = sampling.cluster_split(session.run_dir, cfg)  # the split it trained on
    assert torch.equal(split, labels.cpu()) and images.dtype == torch.uint8
    result = cli("eval", str(session.run_dir), "-n", "100")
    assert result.returncode == 0, result.stderr
    assert "draws its leading class" in result.stdout and "cluster " in result.stdout


def test_resume_of_a_clustered_run_is_exact_with_the_split_it_trained_on(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = ["clusters=4", "checkpoint_every=1000", "sample_every=1000", "log_every=2",
            "lr_decay=none", "eval_every=0"]
    straight = start(tiny("dcgan-mnist-plain", *base, "steps=8"), "dcgan-mnist-plain",
                     runs_dir=runs_dir, name="straight", device="cpu")
    follow(straight, 120)
    half = start(tiny("dcgan-mnist-plain", *base, "steps=4"), "dcgan-mnist-plain",
                 runs_dir=runs_dir, name="half", device="cpu")
    follow(half, 120)
    trained = half.trainer.batches.labels.clone()
    # a refit that comes out differently (another machine, another library version) is not
    # used: the split the run trained on is in its checkpoint
    real_fit = sources.clustering.fit

    def other_fit(images: torch.Tensor, k: int, seed: int, refit: int = 0):
        clusters, labels = real_fit(images, k, seed, refit)
        return clusters, (labels + 1) % k

    monkeypatch.setattr(sources.clustering, "fit", other_fit)
    resumed = start(None, "", resume=half.run_dir, sets=["steps=8"], device="cpu")
    batches = resumed.trainer.batches
    assert torch.equal(batches.labels.cpu(), trained.cpu())
    # and new images go where D learnt them: the centres follow the saved split
    images = batches.images.float().div(127.5).sub(1.0)
    assert (batches.clusters.assign(images) == trained.cpu()).float().mean() > 0.8
    follow(resumed, 120)
    assert resumed.state == "finished" and not resumed.error
    a, b = (load_checkpoint_file(RunStore.open(s.run_dir).checkpoint_paths()[-1])
            for s in (straight, half))
    for part in ("G", "D"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"


@pytest.mark.parametrize("preset, sets", [
    ("dcgan-mnist-plain", ["clusters=7"]), ("dcgan-mnist-plain", ["conditioning=onehot"]),
    ("dcgan-mnist-plain", ["conditioning=onehot", "spectral_norm=true"]),
    ("stacked-mnist", ["clusters=5", "pack=1"]),  # three label blocks, one per channel
])
def test_the_one_hot_maps_cost_one_channel_and_compute_the_same(preset: str,
                                                                 sets: list[str]) -> None:
    from gantui.models.builtin import build_models
    torch.manual_seed(0)
    cfg = tiny(preset, *sets)
    _, D = build_models(cfg)
    D.eval()  # batch norm from running statistics: both ways see the same numbers
    x = torch.randn(12, cfg.channels, 28, 28, requires_grad=True)
    y = torch.randint(0, D.label.n_classes, (12, 3) if preset == "stacked-mnist" else (12,))
    fast = D(x, y)
    maps = D.label(y)[:, :, None, None].expand(-1, -1, 28, 28)
    concat = D.net(torch.cat([x, maps], 1)).flatten()
    assert torch.allclose(fast, concat, atol=1e-5)
    first = [p for p in D.parameters()][0]
    g_fast = torch.autograd.grad(fast.sum(), (x, first))
    g_concat = torch.autograd.grad(concat.sum(), (x, first))
    for a, b in zip(g_fast, g_concat, strict=True):
        assert torch.allclose(a, b, atol=1e-5)


def test_stacked_mnist_gives_each_channel_its_own_cluster(runs_dir: Path) -> None:
    cfg = tiny("stacked-mnist", "clusters=6", "steps=4", "eval_every=0", "n_samples=12",
               "pack=1")
    assert width(cfg) == cfg.nz + 3 * 6
    z = latent(cfg, 500, torch.Generator().manual_seed(0))
    codes = code(cfg, z)
    assert codes.shape == (500, 3) and torch.equal(z[:, cfg.nz:].sum(1), torch.full((500,), 3.))
    assert torch.equal(code(cfg, with_code(cfg, z, codes)), codes)
    assert code_rows(cfg, 12) is None  # three codes: no row per value
    session = start(cfg, "stacked-mnist", runs_dir=runs_dir, device="cpu")
    follow(session, 120)
    assert session.state == "finished" and not session.error
    t = session.trainer
    assert t.D.net[0].in_channels == 3 + 3 * 6
    x, y = t.batches.next()
    assert y.shape == (cfg.batch_size, 3)
    # each channel's label is its digit's own cluster: mostly its nearest one (the balanced
    # split moves some to the next nearest), never a guess (1 in 6)
    digits = t.batches.clusters.assign(x.flatten(0, 1)[:, None])
    assert (digits.view(-1, 3) == y.cpu()).float().mean() > 0.7
    _, y_fake = t._noise(5)
    assert y_fake.shape == (5, 3)
    assert grid_nrow(read_toml_dict(session.run_dir / "config.toml")) == t.previews.nrow
    result = cli("sample", str(session.run_dir), "--code", "2", "-n", "4")
    assert result.returncode == 0, result.stderr


def test_the_default_preset_is_the_plain_dcgan_with_clusters_ema_translation_and_r1() -> None:
    plain = config.load("dcgan-mnist-plain")[1].to_dict()
    clustered = config.load("dcgan-mnist")[1].to_dict()
    changed = {k for k in plain if plain[k] != clustered[k]}
    assert changed == {"clusters", "steps", "ema", "diffaug", "amp", "batch_size", "r1_gamma",
                       "r1_every", "description"}
    assert (clustered["clusters"], clustered["diffaug"], clustered["steps"], clustered["amp"],
            clustered["batch_size"], clustered["r1_gamma"], clustered["r1_every"]) == (
        50, ["translation"], 10000, True, 64, 0.1, 4)


class _Shade(torch.nn.Module):
    """A judge that reads an image's mean shade as one of ten classes."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shade = ((x.mean((1, 2, 3)) + 1) / 2 * 9).round().long()
        return torch.nn.functional.one_hot(shade, 10).float()


class _Drawer(torch.nn.Module):
    """A G that draws each channel in the shade of its code's class, except the last code,
    which it draws as class 0."""

    def __init__(self, cfg: config.Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, z: torch.Tensor, _y: None) -> torch.Tensor:
        c = code(self.cfg, z).reshape(len(z), -1)
        c = torch.where(c == self.cfg.clusters - 1, 0, c)
        shade = c.float() / 9 * 2 - 1
        return shade[:, :, None, None].expand(-1, -1, 4, 4).clone()


@pytest.mark.parametrize("preset", ["dcgan-mnist-plain", "stacked-mnist"])
def test_the_cluster_reading_says_which_clusters_g_draws_as_what(preset: str) -> None:
    cfg = tiny(preset, "clusters=4")
    shades = [0, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]  # cluster 1 mixes classes 1 and 2
    labels = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 3, 3, 3, 3])
    images = (torch.tensor(shades).float() / 9 * 2 - 1)[:, None, None, None].expand(
        -1, 1, 4, 4)
    reading = clustered.read_clusters(_Shade(), 10, _Drawer(cfg), cfg, images, labels,
                                      per_code=6)
    assert reading.data[1, 1] == 0.75 and reading.data[1, 2] == 0.25
    assert reading.leading.tolist() == [0, 1, 2, 3]
    assert reading.fake[:, :4].tolist() == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0],
                                            [1, 0, 0, 0]]
    assert reading.lead_shares() == (0.9375, 0.75)
    assert reading.worst(2) == [3, 1] and reading.apart().tolist() == [0, 0.25, 0, 1]
    said = clustered.lines(reading, n_worst=1)
    assert "75.0% (± 0.0) of the time" in said[0] and "93.8% that class" in said[0]
    assert not any("more often than the cluster holds" in line for line in said)
    assert said[1].startswith("clusters each class leads: 0: 1  1: 1  2: 1  3: 1  4: 0")
    assert said[-1].split() == ["cluster", "3", "1.00", "data", "3", "100%", "|", "G", "0",
                                "100%"]
    from gantui.data.datasets import FASHION_CLASSES

    named = clustered.lines(reading, n_worst=1, names=FASHION_CLASSES)  # eval's names
    assert named[1].startswith("clusters each class leads: T-shirt/top: 1  Trouser: 1  "
                               "Pullover: 1  Dress: 1  Coat: 0")
    assert named[-1].endswith("data Dress 100%  |  G T-shirt/top 100%")
    # G drawing the leading class more often than the data holds it is said only beyond noise
    data = torch.tensor([[0.8, 0.2], [0.2, 0.8]])
    for fake, n, sharper in ((0.9, 100, True), (0.84, 100, False), (0.84, 10_000, True)):
        sharp = clustered.ClusterReading(data, torch.tensor([[fake, 1 - fake],
                                                             [1 - fake, fake]]), n)
        said = " ".join(clustered.lines(sharp, judge_accuracy=0.987))
        assert ("more often than the cluster holds it" in said) == sharper, (fake, n)
        assert "right 98.7% of the time" in said
    with pytest.raises(GantuiError, match="clusters are not 0 to 3"):  # a cluster too many
        clustered.read_clusters(_Shade(), 10, _Drawer(cfg), cfg, images, labels + 1)
    with pytest.raises(GantuiError, match="needs a run with clusters"):
        clustered.read_clusters(_Shade(), 10, _Drawer(cfg), tiny(preset, "clusters=0"), images,
                                labels)
