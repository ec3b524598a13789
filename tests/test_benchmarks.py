"""The benchmark presets (#23): the 25-Gaussian grid and stacked MNIST, scored as VEEGAN and
PacGAN score them, and DiffAugment; real pieces at toy size."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gantui import config
from gantui import events as ev
from gantui.config import ConfigError
from gantui.data.sources import (
    GRID_SIGMA,
    MixtureBatches,
    StackedBatches,
    grid_modes,
    mixture,
)
from gantui.engine.augment import ADA_IMAGES, ADA_INTERVAL, AugmentChance, diff_augment
from gantui.headless import LinePrinter, follow
from gantui.quality import stacked
from gantui.quality.describe import diagnosis_line
from gantui.quality.diagnostics import legible
from gantui.quality.evaluate import Evaluator, Score, is_better
from gantui.quality.judge import DigitJudge
from gantui.quality.metrics import mixture_coverage
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start

from .conftest import tiny


class Points(nn.Module):
    """A 2-D "generator" that returns fixed points in turn, ignoring z."""

    def __init__(self, points: torch.Tensor) -> None:
        super().__init__()
        self.points = points

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.points[torch.arange(len(z)) % len(self.points)]


# ---- grid-25 ---------------------------------------------------------------------------------

def test_grid_is_the_5x5_lattice_with_sigma_005() -> None:
    modes = grid_modes()
    assert modes.shape == (25, 2)
    assert sorted(set(modes[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    assert len({tuple(m) for m in modes.tolist()}) == 25
    assert mixture("grid25").sigma == GRID_SIGMA == 0.05


def test_grid_scoring_on_exact_modes_collapse_and_between_modes() -> None:
    evaluator = Evaluator(config.load("grid-25")[1], torch.device("cpu"))
    assert evaluator.kind == "ring" and evaluator.n == 2500
    exact = evaluator.evaluate(Points(grid_modes()), step=1)
    assert exact.values == {"modes": 25.0, "hq": 1.0} and exact.primary == "modes"
    # three modes, each 2.9 sigma off centre: still high quality; 3.1 sigma: not
    near = grid_modes()[:3] + torch.tensor([2.9 * GRID_SIGMA, 0.0])
    far = grid_modes()[:3] + torch.tensor([0.0, 3.1 * GRID_SIGMA])
    assert mixture_coverage(near, "grid25") == (3, 1.0)
    assert mixture_coverage(far, "grid25") == (0, 0.0)
    # a collapsed generator: one mode, plus points half-way between two modes
    collapsed = torch.cat([grid_modes()[12:13].repeat(3, 1), torch.tensor([[1.0, 0.0]])])
    assert mixture_coverage(collapsed, "grid25") == (1, 0.75)
    assert mixture_coverage(torch.full((4, 2), float("nan")), "grid25") == (0, 0.0)


def test_grid_batches_cover_every_mode_and_resume_exactly() -> None:
    a = MixtureBatches("grid25", 2048, seed=3, device=torch.device("cpu"))
    first, _ = a.next()
    covered, hq = mixture_coverage(first, "grid25")
    assert covered == 25 and hq > 0.97  # 1 - exp(-4.5) = 98.9% of 2-D Gaussian mass in 3 sigma
    state = a.state_dict()
    expected = a.next()[0]
    b = MixtureBatches("grid25", 2048, seed=3, device=torch.device("cpu"))
    b.load_state_dict(state)
    assert torch.equal(b.next()[0], expected)
    assert "grid25: 25 Gaussians" in a.note


def test_grid_config_rules() -> None:
    cfg = config.load("grid-25")[1]
    assert cfg.image_shape == (2,) and cfg.arch == "mlp"
    with pytest.raises(ConfigError, match="grid25 needs arch = mlp"):
        config.load("grid-25", ["arch=dcgan"])
    with pytest.raises(ConfigError, match="grid25 is synthesised"):
        config.load("grid-25", ["data=/tmp"])


# ---- stacked MNIST ---------------------------------------------------------------------------

def test_mode_scores_uniform_collapsed_and_half() -> None:
    uniform = torch.arange(1000).repeat(26)
    assert stacked.mode_scores(uniform) == (1000, 0.0)
    modes, kl = stacked.mode_scores(torch.full((26_000,), 417))
    assert modes == 1 and kl == pytest.approx(math.log(1000))
    modes, kl = stacked.mode_scores(torch.arange(500).repeat(52))
    assert modes == 500 and kl == pytest.approx(math.log(2))
    assert stacked.mode_scores(torch.empty(0, dtype=torch.long)) == (0, math.log(1000))


def test_digit_skew_splits_kl_into_channel_skew_and_dependence() -> None:
    uniform = torch.arange(1000).repeat(26)
    shares, kl_digits = stacked.digit_skew(uniform)
    assert shares == pytest.approx([0.1] * 10) and kl_digits == pytest.approx(0.0)
    # channel 0 always 4: that channel alone pays ln 10, and that is all the KL there is
    fours = 400 + torch.arange(100).repeat(30)
    shares, kl_digits = stacked.digit_skew(fours)
    assert kl_digits == pytest.approx(math.log(10))
    assert stacked.mode_scores(fours)[1] == pytest.approx(kl_digits)
    assert shares[4] == pytest.approx(1 / 3 + 2 / 30)
    # three equal digits (000, 111, ... 999): every channel uniform, all KL is dependence
    same = (torch.arange(10) * 111).repeat(100)
    assert stacked.digit_skew(same)[1] == pytest.approx(0.0)
    assert stacked.mode_scores(same)[1] == pytest.approx(math.log(100))
    # in general kl = kl_digits + (sum of channel entropies - joint entropy) >= kl_digits
    gen = torch.Generator().manual_seed(3)
    skewed = torch.multinomial(torch.linspace(1, 3, 1000), 26_000, True, generator=gen)
    assert stacked.mode_scores(skewed)[1] >= stacked.digit_skew(skewed)[1] > 0
    assert stacked.digit_skew(torch.empty(0, dtype=torch.long))[1] == pytest.approx(
        3 * math.log(10))
    line = diagnosis_line({"kl": 0.51, "kl_digits": 0.31, "r_t": 0.4})
    assert line.startswith("digit skew: KL 0.31 of 0.51")


def _judge() -> DigitJudge:
    torch.manual_seed(0)
    return DigitJudge().eval()


def test_triple_modes_read_each_channel_as_one_digit() -> None:
    judge = _judge()
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(70, 3, 28, 28, generator=gen) * 2 - 1  # three passes on the CPU
    with torch.no_grad():
        per_channel = [judge(images[:, c:c + 1]).argmax(1) for c in range(3)]
    expected = per_channel[0] * 100 + per_channel[1] * 10 + per_channel[2]
    assert torch.equal(stacked.triple_modes(judge, images), expected)
    with pytest.raises(ValueError, match="3, H, W"):
        stacked.triple_modes(judge, images[:, :1])


def test_floor_scores_real_triples_as_samples_are_scored() -> None:
    judge = _judge()
    gen = torch.Generator().manual_seed(2)
    digits = torch.randint(0, 256, (50, 1, 28, 28), generator=gen, dtype=torch.uint8)
    triples = torch.cat(list(stacked.real_triples(digits, 1200, seed=5)))  # two batches
    assert triples.shape == (1200, 3, 28, 28)
    assert triples.min() >= -1 and triples.max() <= 1
    # every channel is one of the digits, drawn independently
    flat = digits.float().div(127.5).sub(1).flatten(1)
    channels = triples.reshape(-1, 28 * 28)
    assert (channels[:300, None] == flat[None]).all(-1).any(-1).all()
    modes, logits = stacked.read_channels(judge, triples)
    assert torch.equal(modes, stacked.triple_modes(judge, triples)) and logits.shape == (3600, 10)
    expected = (*stacked.mode_scores(modes), legible(logits))
    assert stacked.floor(judge, digits, 1200, seed=5) == expected


def test_legible_counts_confident_readings() -> None:
    sure, torn = [0.0] * 9 + [5.0], [0.0] * 8 + [3.0, 3.0]  # p(top) 0.95 and 0.46
    assert legible(torch.tensor([sure, sure, sure, torn])) == pytest.approx(0.75)
    assert legible(torch.tensor([torn])) == 0.0 and legible(torch.empty(0, 10)) == 0.0
    line = diagnosis_line({"legible": 0.29, "legible_real": 0.96})
    assert line == "legible 29% (real 96%)"


def test_stacked_scores_rank_modes_then_kl() -> None:
    def score(modes: float, kl: float) -> Score:
        return Score(1, {"modes": modes, "kl": kl, "kl_floor": 0.03}, "modes", 0.0)

    assert is_better(score(1000, 0.2), score(999, 0.01))
    assert is_better(score(1000, 0.04), score(1000, 0.05))
    assert not is_better(score(1000, 0.05), score(1000, 0.04))


def test_stacked_batches_stack_three_digits_and_resume() -> None:
    gen = torch.Generator().manual_seed(4)
    digits = torch.randint(0, 256, (30, 1, 28, 28), generator=gen, dtype=torch.uint8)
    a = StackedBatches(digits, 16, seed=1, device=torch.device("cpu"), note="t")
    x, y = a.next()
    assert y is None and x.shape == (16, 3, 28, 28)
    flat = digits.float().div(127.5).sub(1).flatten(1)
    assert (x.reshape(48, 1, -1) == flat[None]).all(-1).any(-1).all()
    state = a.state_dict()
    b = StackedBatches(digits, 16, seed=1, device=torch.device("cpu"), note="t")
    b.load_state_dict(state)
    assert torch.equal(a.next()[0], b.next()[0])


def test_stacked_config_rules() -> None:
    cfg = config.load("stacked-mnist")[1]
    assert cfg.image_shape == (3, 28, 28) and cfg.pack == 1
    assert cfg.clusters == 80 and cfg.cluster_refit == 20
    with pytest.raises(ConfigError, match="set channels = 3"):
        config.load("stacked-mnist", ["channels=1"])
    with pytest.raises(ConfigError, match="conditional models need labelled data"):
        config.load("stacked-mnist", ["conditioning=onehot", "pack=1"])


# ---- DiffAugment -----------------------------------------------------------------------------

def test_diffaug_keeps_shape_and_range_and_is_deterministic() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 16, 16, generator=gen) * 2 - 1
    policy = ("translation", "cutout")
    a = diff_augment(x, policy, torch.Generator().manual_seed(7))
    b = diff_augment(x, policy, torch.Generator().manual_seed(7))
    c = diff_augment(x, policy, torch.Generator().manual_seed(8))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1  # shifts and cut-outs fill with 0
    # an 8x8 cut-out in each image, at least its 4x4 quarter inside the image
    assert ((a == 0).all(1).flatten(1).sum(1) >= 16).all()
    assert diff_augment(x, (), gen) is x
    colour = diff_augment(x, ("color",), torch.Generator().manual_seed(7))
    assert colour.shape == x.shape and not torch.equal(colour, x)
    # differentiable: G's gradient flows through every augmentation
    leaf = x.clone().requires_grad_(True)
    diff_augment(leaf, ("color", "translation", "cutout"), gen).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_diffaug_config_key_is_live_and_checked() -> None:
    assert "diffaug" in config.LIVE_KEYS
    assert config.parse_live("diffaug", "translation,cutout") == ("translation", "cutout")
    with pytest.raises(ConfigError, match="choose from color, translation, cutout"):
        config.load("dcgan-mnist-plain", ["diffaug=blur"])
    with pytest.raises(ConfigError, match="2-D points"):
        config.load("grid-25", ["diffaug=cutout"])


def test_each_augmentation_reaches_its_share_of_images() -> None:
    """diffaug_p: each image is shifted with chance p (the others are left exactly as they
    were); at 1 the draws are the same as without a chance, at 0 nothing is drawn."""
    x = torch.rand(400, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    gen = torch.Generator().manual_seed(3)
    before = gen.get_state()
    assert diff_augment(x, ("translation",), gen, p=0.0) is x
    assert torch.equal(gen.get_state(), before)
    assert torch.equal(diff_augment(x, ("translation",), torch.Generator().manual_seed(5), 1.0),
                       diff_augment(x, ("translation",), torch.Generator().manual_seed(5)))
    half = diff_augment(x, ("translation",), torch.Generator().manual_seed(5), 0.5)
    kept = (half == x).flatten(1).all(1).float().mean().item()
    # 400 images at p = 0.5: kept is the unshifted share (a zero shift also keeps one)
    assert 0.4 < kept < 0.65, kept
    leaf = x[:8].clone().requires_grad_(True)
    diff_augment(leaf, ("color", "translation"), gen, 0.5).sum().backward()
    assert leaf.grad is not None and leaf.grad.abs().sum() > 0


def test_the_adaptive_chance_follows_r_t() -> None:
    """Every ADA_INTERVAL batches the chance moves by the images seen over ADA_IMAGES: up
    while D calls more real images real than the target, down (never below 0) when fewer;
    off, it is ``diffaug_p``; its state carries an interval under way."""
    cfg = config.load("dcgan-mnist", ["ada_target=0.6"])[1]
    chance = AugmentChance(0.0, torch.device("cpu"))
    sure, unsure = torch.full((64, 1), 3.0), torch.tensor([1.0, -1.0] * 32)
    for _ in range(3 * ADA_INTERVAL):  # r_t = 1 > 0.6
        chance.observe(sure, cfg)
    assert chance.p(cfg) == pytest.approx(3 * ADA_INTERVAL * 64 / ADA_IMAGES)
    for _ in range(ADA_INTERVAL):  # r_t = 0 < 0.6
        chance.observe(unsure, cfg)
    assert chance.p(cfg) == pytest.approx(2 * ADA_INTERVAL * 64 / ADA_IMAGES)
    for _ in range(ADA_INTERVAL - 1):
        chance.observe(sure, cfg)
    saved = chance.state_dict()
    assert saved["sum"] == 3 * 64 and saved["count"] == 3 * 64
    twin = AugmentChance(0.0, torch.device("cpu"))
    twin.load_state_dict(saved)
    for each in (chance, twin):  # the interval's last batch: the same adjustment
        each.observe(unsure, cfg)  # r_t = (3 * 64 + 0) / 256 = 0.75: up again
    assert twin.p(cfg) == chance.p(cfg) == pytest.approx(3 * ADA_INTERVAL * 64 / ADA_IMAGES)
    for _ in range(40 * ADA_INTERVAL):
        chance.observe(unsure, cfg)
    assert chance.p(cfg) == 0.0
    chance.observe(sure, cfg)  # an interval under way when it is switched off...
    off = cfg.replace(ada_target=0.0, diffaug_p=0.3)
    chance.observe(sure, off)
    assert chance.p(off) == 0.3 and chance.state_dict()["count"] == 0  # ...is dropped
    old = AugmentChance(0.0, torch.device("cpu"))
    old.load_state_dict(None)  # a checkpoint from before the chance was saved
    assert old.p(cfg) == 0.0


def test_the_chance_keys_are_live_and_checked() -> None:
    assert {"diffaug_p", "ada_target"} <= set(config.LIVE_KEYS)
    for sets, message in ((["diffaug_p=1.5"], "diffaug_p must be from 0 to 1"),
                          (["ada_target=1"], "ada_target must be from 0"),
                          (["diffaug=", "ada_target=0.6"], "diffaug names none")):
        with pytest.raises(ConfigError, match=message):
            config.load("dcgan-mnist", sets)


def test_an_adaptive_run_records_its_chance_and_resumes_exactly(runs_dir: Path) -> None:
    """ada_target on a DCGAN: ``aug_p`` in the metrics and the headless line, and 5 steps,
    resume, 3 more == 8 straight (the chance and an adjustment interval under way are in the
    checkpoint; every mask is drawn from the saved generator)."""
    base = ["checkpoint_every=1000", "sample_every=1000", "log_every=1", "eval_every=0",
            "diffaug=color,translation", "ada_target=0.01", "batch_size=8", "d_steps=2"]
    straight = start(tiny("dcgan-mnist-plain", *base, "steps=8"), "dcgan-mnist-plain",
                     runs_dir=runs_dir, name="ada-straight", device="cpu")
    events = follow(straight, 120)
    assert straight.state == "finished", straight.error
    shares = [r["aug_p"] for r in RunStore.open(straight.run_dir).metrics()]
    # 2 D steps a step, an adjustment every 4, after steps 2, 4, 6 and 8: D calls more than
    # 1% of the real images real from the start, so each adjustment is up
    assert shares == pytest.approx([k // 2 * ADA_INTERVAL * 8 / ADA_IMAGES for k in range(1, 9)])
    last = [e for e in events if isinstance(e, ev.Metrics)][-1]
    assert last.aug_p == shares[-1] and "  aug 0%" in LinePrinter().line(last)
    half = start(tiny("dcgan-mnist-plain", *base, "steps=5"), "dcgan-mnist-plain",
                 runs_dir=runs_dir, name="ada-half", device="cpu")
    follow(half, 120)
    state = load_checkpoint_file(RunStore.open(half.run_dir).checkpoint_paths()[-1])
    assert state["augment"]["adapted"] == shares[4] > 0  # masks drawn before and after
    assert state["augment"]["batches"] == 10 and state["augment"]["count"] == 16
    resumed = start(None, "", resume=half.run_dir, sets=["steps=8"], device="cpu")
    follow(resumed, 120)
    assert resumed.state == "finished" and not resumed.error
    a, b = _weights(straight.run_dir), _weights(half.run_dir)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert [r["aug_p"] for r in RunStore.open(half.run_dir).metrics()] == shares


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint_file(RunStore.open(run_dir).checkpoint_paths()[-1])
    return {**{f"G.{k}": v for k, v in state["G"].items()},
            **{f"D.{k}": v for k, v in state["D"].items()}}


def test_stacked_run_with_diffaug_resumes_exactly(runs_dir: Path) -> None:
    """4 steps, resume, 4 steps == 8 straight: the stacked stream and the augmentations draw
    from saved generators."""
    base = ["checkpoint_every=1000", "sample_every=1000", "log_every=2", "lr_decay=none",
            "diffaug=color,translation,cutout", "eval_every=0", "batch_size=8"]
    straight = start(tiny("stacked-mnist", *base, "steps=8"), "stacked-mnist",
                     runs_dir=runs_dir, name="straight", device="cpu")
    follow(straight, 120)
    half = start(tiny("stacked-mnist", *base, "steps=4"), "stacked-mnist", runs_dir=runs_dir,
                 name="half", device="cpu")
    follow(half, 120)
    resumed = start(None, "", resume=half.run_dir, sets=["steps=8"], device="cpu")
    follow(resumed, 120)
    assert resumed.state == "finished" and not resumed.error
    # every image augmented (diffaug_p = 1, no ada_target): no chance to record
    assert all("aug_p" not in r for r in RunStore.open(straight.run_dir).metrics())
    a, b = _weights(straight.run_dir), _weights(half.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
