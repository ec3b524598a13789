"""The digit judge (trained once per session, into a temporary cache) and MNIST evaluation.

Stand-in generators return real digits, noise or one digit over and over, so the expected
scores are known: real digits sit at the floor, the others far above it.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from gantui import config
from gantui.data.sources import load_bundled_mnist
from gantui.models.builtin import build_models
from gantui.quality import judge as judgelib
from gantui.quality.evaluate import Evaluator, Score
from gantui.quality.judge import DigitJudge, JudgeInfo, load_judge, stratified_split, to_unit

N_EVAL = 500


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Two torch threads on two cores shared with other work thrash (5x slower here); one
    thread is steady and computes the same numbers."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(trained_judge: dict) -> dict:
    """The judge trained once for the session into a fresh cache (conftest
    ``trained_judge``), with the RNG state recorded around its training."""
    return trained_judge


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    return load_bundled_mnist()


@pytest.fixture(scope="module")
def train_digits(digits) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits the judge was trained on (not its held-out reference)."""
    images, labels = digits
    train_idx, _ = stratified_split(labels, judgelib.HOLDOUT, judgelib.SEED)
    return images[train_idx], labels[train_idx]


# ---- the judge ---------------------------------------------------------------------------------

def test_judge_is_accurate_on_held_out_digits(trained) -> None:
    info: JudgeInfo = trained["info"]
    assert info.accuracy >= 0.97
    assert (info.n_train, info.n_holdout) == (4000, 1000)
    assert info.version == judgelib.JUDGE_VERSION
    assert Path(info.path).is_file() and Path(info.path).parent == trained["cache"]
    assert trained["held_x"].shape == (1000, 1, 28, 28)
    assert trained["held_x"].dtype == torch.uint8
    assert torch.bincount(trained["held_y"]).tolist() == [100] * 10  # stratified


def test_training_says_so_once_and_leaves_the_global_rng_alone(trained) -> None:
    messages = trained["messages"]
    assert len(messages) == 2
    assert messages[0].startswith("training the digit judge once for this machine")
    assert trained["info"].path in messages[0]
    assert "trained in" in messages[1]
    assert torch.equal(trained["rng_before"], trained["rng_after"])


def test_second_load_comes_from_the_cache(trained, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("retrained although a cache file exists")

    monkeypatch.setattr(judgelib, "train_judge", no_training)
    messages: list[str] = []
    before = torch.get_rng_state()
    started = time.perf_counter()
    judge, info, held_x, held_y = load_judge(cache_dir=trained["cache"], log=messages.append)
    assert time.perf_counter() - started < 5
    assert torch.equal(torch.get_rng_state(), before)
    assert info == trained["info"] and messages == []
    assert torch.equal(held_x, trained["held_x"]) and torch.equal(held_y, trained["held_y"])
    x = to_unit(held_x[:64])
    assert torch.equal(judge(x), trained["judge"](x))
    # the environment variable names the cache when no folder is given
    monkeypatch.setenv("GANTUI_CACHE", str(trained["cache"]))
    assert load_judge()[1] == info


def quick_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Make retraining instant (an untrained judge) and count it."""
    calls: list[int] = []

    def untrained(images, labels, **kwargs):
        calls.append(len(labels))
        train_idx, held_idx = stratified_split(labels, kwargs["holdout"], kwargs["seed"])
        info = JudgeInfo(accuracy=0.1, n_train=len(train_idx), n_holdout=len(held_idx),
                         seconds=0.0, source=kwargs["source"], path="")
        return DigitJudge().eval(), info

    monkeypatch.setattr(judgelib, "train_judge", untrained)
    return calls


@pytest.mark.parametrize("damage", ["garbage", "truncated", "other_version"])
def test_a_corrupt_or_stale_cache_file_is_trained_over(trained, tmp_path: Path, damage: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    original = Path(trained["info"].path)
    cache = tmp_path / "cache"
    cache.mkdir()
    target = cache / original.name
    if damage == "garbage":
        target.write_bytes(b"this is not a torch file")
    elif damage == "truncated":
        target.write_bytes(original.read_bytes()[:5000])
    else:
        payload = torch.load(original, weights_only=True)
        payload["info"]["version"] = payload["version"] = judgelib.JUDGE_VERSION + 99
        torch.save(payload, target)
    calls = quick_training(monkeypatch)
    messages: list[str] = []
    judge, info, _, _ = load_judge(cache_dir=cache, log=messages.append)
    assert calls == [5000]
    assert "unusable" in messages[0] and "retraining" in messages[0]
    assert isinstance(judge, DigitJudge) and info.path == str(target)
    reloaded = torch.load(target, weights_only=True)  # rewritten as a good file
    assert reloaded["version"] == judgelib.JUDGE_VERSION


def write_mnist_root(root: Path, images: torch.Tensor, labels: torch.Tensor) -> Path:
    """A torchvision-layout MNIST root (``root/MNIST/raw``) holding the given digits."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split in ("train", "t10k"):
        n = len(labels)
        header = (2051).to_bytes(4, "big") + n.to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
        (raw / f"{split}-images-idx3-ubyte").write_bytes(header + images.numpy().tobytes())
        header = (2049).to_bytes(4, "big") + n.to_bytes(4, "big")
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            header + labels.to(torch.uint8).numpy().tobytes())
    return root


def test_a_full_mnist_root_gets_its_own_cache_entry(trained, digits, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    images, labels = digits
    pick = torch.arange(0, 5000, 10)  # 500 digits, 50 per class
    root = write_mnist_root(tmp_path / "mnist", images[pick], labels[pick])
    cache = tmp_path / "cache"
    calls = quick_training(monkeypatch)
    messages: list[str] = []
    _, info, held_x, held_y = load_judge("full", str(root), cache, messages.append)
    assert calls == [500] and (info.n_train, info.n_holdout) == (400, 100)
    assert str(root) in info.source and str(root) in messages[0]
    assert Path(info.path).name != Path(trained["info"].path).name
    assert held_x.shape == (100, 1, 28, 28) and torch.bincount(held_y).tolist() == [10] * 10
    assert load_judge("full", str(root), cache)[1] == info and calls == [500]  # cached
    # the same path with rewritten files is other data: a new entry
    labels_file = root / "MNIST" / "raw" / "train-labels-idx1-ubyte"
    stamp = labels_file.stat().st_mtime_ns + 10**9
    os.utime(labels_file, ns=(stamp, stamp))
    load_judge("full", str(root), cache)
    assert calls == [500, 500] and len(list(cache.glob("judge-*.pt"))) == 2


def test_an_unknown_source_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(judgelib.JudgeError, match="unknown digit-judge source"):
        load_judge("imagenet", cache_dir=tmp_path)


def test_judge_accepts_other_sizes_and_rgb(trained) -> None:
    judge = trained["judge"]
    x = to_unit(trained["held_x"][:8])
    rgb32 = nn.functional.interpolate(x, size=(32, 32), mode="bilinear").expand(-1, 3, -1, -1)
    feats, logits = judge.features_and_logits(rgb32)
    assert feats.shape == (8, judgelib.FEATURE_DIM) and logits.shape == (8, 10)
    assert (feats >= 0).all()
    # features are scaled to mean square 1 on the training digits; held-out ones are close
    mean_square = float(judge.features(to_unit(trained["held_x"])).square().mean())
    assert 0.7 < mean_square < 1.4
    assert torch.equal(judge.features(x), judge.features_and_logits(x)[0])


# ---- MNIST evaluation with stand-in generators --------------------------------------------------

class Digits(nn.Module):
    """A "generator" that hands out real digits in a fixed shuffled order (of the class asked
    for, if ``follow_y``), ignoring z."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, follow_y: bool = True) -> None:
        super().__init__()
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(5))
        images, labels = images[order], labels[order]  # the bundled digits come sorted by class
        self.images, self.labels, self.follow_y = to_unit(images), labels, follow_y
        self.next = 0
        self.per_class = {int(c): torch.nonzero(labels == c).flatten() for c in labels.unique()}

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        n = len(z)
        if y is not None and self.follow_y:
            idx = torch.stack([self.per_class[int(c)][(self.next + i) % len(self.per_class[
                int(c)])] for i, c in enumerate(y.tolist())])
        else:
            idx = torch.arange(self.next, self.next + n) % len(self.images)
        self.next += n
        return self.images[idx]


class Noise(nn.Module):
    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        gen = torch.Generator().manual_seed(int(z.abs().sum() * 1000) % 2**31)
        return torch.rand(len(z), 1, 28, 28, generator=gen) * 2 - 1


class OneDigit(nn.Module):
    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = to_unit(image)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return self.image.expand(len(z), -1, -1, -1)


def evaluator(trained, preset: str = "dcgan-mnist-plain") -> Evaluator:
    cfg = config.load(preset)[1]
    return Evaluator(cfg, torch.device("cpu"), n=N_EVAL, cache_dir=trained["cache"])


@pytest.fixture(scope="module")
def real_score(trained, train_digits) -> Score:
    return evaluator(trained).evaluate(Digits(*train_digits), step=100)


def test_real_digits_score_at_the_floor(real_score: Score, trained) -> None:
    v = real_score.values
    assert real_score.step == 100 and real_score.primary == "judge_fd"
    assert set(v) >= {"judge_fd", "kid", "is", "classes", "class_entropy", "precision",
                      "recall", "density", "coverage", "judge_acc"}
    assert "cond_acc" not in v
    assert v["classes"] == 10 and v["class_entropy"] > 2.2
    assert v["is"] > 8
    assert v["recall"] > 0.6 and v["coverage"] > 0.8 and v["precision"] > 0.6
    assert abs(v["kid"]) < 0.05
    assert v["judge_acc"] == trained["info"].accuracy
    assert real_score.seconds > 0


def test_noise_and_a_collapsed_generator_score_badly(real_score: Score, trained,
                                                     train_digits) -> None:
    ev = evaluator(trained)
    noise = ev.evaluate(Noise(), step=1).values
    collapsed = ev.evaluate(OneDigit(train_digits[0][0]), step=2).values
    floor = real_score.values["judge_fd"]
    for bad in (noise, collapsed):
        assert bad["judge_fd"] > 10 * floor
        assert bad["kid"] > 10 * max(real_score.values["kid"], 1e-3)
    assert collapsed["classes"] == 1 and collapsed["class_entropy"] == 0.0
    assert collapsed["recall"] < 0.02 and collapsed["coverage"] < 0.05
    assert collapsed["is"] == pytest.approx(1.0, abs=1e-3)


class Broken(nn.Module):
    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return torch.full((len(z), 1, 28, 28), float("nan"))


def test_a_diverged_generator_gets_finite_bad_scores(real_score: Score, trained) -> None:
    v = evaluator(trained).evaluate(Broken(), step=1).values
    assert all(isinstance(x, float) and x == x for x in v.values())  # no NaN anywhere
    assert v["judge_fd"] > 10 * real_score.values["judge_fd"] and v["classes"] == 1


def test_conditional_scores_follow_the_labels(trained, train_digits) -> None:
    ev = evaluator(trained, "cdcgan-mnist")
    follows = ev.evaluate(Digits(*train_digits), step=1)
    ignores = ev.evaluate(Digits(*train_digits, follow_y=False), step=1)
    assert follows.primary == "cond_acc"
    assert follows.values["cond_acc"] > 0.95
    assert ignores.values["cond_acc"] == pytest.approx(0.1, abs=0.05)
    assert follows.values["classes"] == 10


def test_evaluate_restores_mode_repeats_its_noise_and_spares_the_rng(trained) -> None:
    cfg = config.load("dcgan-mnist-plain")[1]
    G, _ = build_models(cfg)
    G.train()
    before = torch.get_rng_state()
    ev = evaluator(trained)
    first = ev.evaluate(G, step=1)
    second = ev.evaluate(G, step=2)
    assert torch.equal(torch.get_rng_state(), before)
    assert G.training
    assert first.values == second.values  # the same z both times, and BN left alone
    G.eval()
    ev.evaluate(G, step=3)
    assert not G.training


def test_a_generator_at_another_size_is_scored_at_its_size(trained, train_digits) -> None:
    cfg = config.load("dcgan-mnist-plain", ["image_size=32"])[1]
    ev = Evaluator(cfg, torch.device("cpu"), n=N_EVAL, cache_dir=trained["cache"])
    images, labels = train_digits
    big = nn.functional.interpolate(images.float(), size=(32, 32), mode="bilinear",
                                    antialias=True).round().clamp(0, 255).to(torch.uint8)
    score = ev.evaluate(Digits(big, labels), step=1)
    assert score.values["classes"] == 10 and score.values["recall"] > 0.5
