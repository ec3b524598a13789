"""Diagnostics that say why (#23 part 3): D overfitting (r_t, D's accuracy on training against
held-out digits, the warning), memorisation (near-copies) and class shares over time."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gantui.data.sources import DataError, mnist_split
from gantui.quality import diagnostics as diag
from gantui.quality.describe import SHADES, diagnosis_line, share_strip, shares_of
from gantui.quality.evaluate import Evaluator
from gantui.quality.judge import load_judge

from .conftest import cli, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


# ---- D overfitting ----------------------------------------------------------------------------

def test_r_t_is_the_mean_sign_of_d_on_real_batches() -> None:
    signs = diag.RealSigns(diag.real_threshold("nonsaturating"))
    assert signs.take() != signs.take()  # NaN before any batch
    signs.add(torch.tensor([2.0, -1.0, 3.0, 0.5]))
    signs.add(torch.tensor([-4.0, -2.0, 1.0, 1.0]))
    assert signs.take() == pytest.approx((2 + 0) / 8)  # signs +1-1+1+1, then -1-1+1+1
    assert signs.take() != signs.take()  # taken: the next interval starts empty
    lsgan = diag.RealSigns(diag.real_threshold("lsgan"))  # LSGAN calls real above 0.5
    lsgan.add(torch.tensor([0.9, 0.6, 0.4, 0.1]))
    assert lsgan.take() == 0.0


class Memoriser(nn.Module):
    """A crafted D: +3 for the images it was shown (exactly), -3 for any other, behind a
    batch norm whose running statistics training would move."""

    def __init__(self, seen: torch.Tensor) -> None:
        super().__init__()
        self.seen = seen.flatten(1)
        self.norm = nn.BatchNorm1d(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        self.norm(x.flatten(1).mean(1, keepdim=True))  # moves running stats in train mode
        exact = "donot_use_mm_for_euclid_dist"
        known = torch.cdist(x.flatten(1), self.seen, compute_mode=exact).min(dim=1).values < 1e-4
        return torch.where(known, 3.0, -3.0)


def test_the_accuracy_gap_of_a_memorising_d_warns_when_it_lasts() -> None:
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(40, 1, 8, 8, generator=gen) * 2 - 1
    held = torch.rand(30, 1, 8, 8, generator=gen) * 2 - 1
    D = Memoriser(train)
    before = D.norm.running_mean.clone()
    acc_train = diag.d_accuracy(D, train, None, batch_size=16)
    acc_held = diag.d_accuracy(D, held, None, batch_size=16)
    assert (acc_train, acc_held) == (1.0, 0.0)
    assert torch.equal(D.norm.running_mean, before)  # training's statistics are put back
    # half the held-out images known as well: accuracy 0.5 (the crafted outputs decide)
    assert diag.d_accuracy(Memoriser(torch.cat([train, held[:15]])), held, None,
                           batch_size=16) == 0.5

    monitor = diag.OverfitMonitor()
    assert monitor.update(0.9, acc_train, acc_held) == []  # one evaluation is not sustained
    (kind, message), = monitor.update(0.95, acc_train, acc_held)
    assert kind == "overfit" and "r_t = +0.95" in message and "100%" in message
    for remedy in ("augmentation", "ada_target", "R1", "instance noise", "lr_d"):
        assert remedy in message
    assert monitor.update(0.95, acc_train, acc_held) == []  # said once per episode
    assert monitor.update(0.2, 0.8, 0.78) == []  # a small gap clears it...
    monitor.update(0.9, 1.0, 0.5)
    assert len(monitor.update(0.9, 1.0, 0.5)) == 1  # ...and a new episode warns again


def test_the_overfit_streak_goes_through_a_checkpoint(tmp_path) -> None:
    """A resumed run continues the streak: one evaluation over the gap before the checkpoint
    and one after make the warning, as they would have without the stop."""
    from gantui.engine import checkpoint
    from gantui.engine.control import Controller
    from gantui.engine.trainer import Trainer
    from gantui.run.store import RunStore

    from .conftest import tiny

    cfg = tiny("ring-8", "eval_every=0")
    trainers = [Trainer(cfg, store=RunStore.create(tmp_path, name, cfg.to_dict()),
                        emit=lambda e: None, controller=Controller(),
                        device=torch.device("cpu"), preset="ring-8", name=name)
                for name in ("before", "after")]
    assert trainers[0].evaluation.overfit.update(0.9, 1.0, 0.5) == []
    checkpoint.load(trainers[1], checkpoint.save(trainers[0]))
    assert len(trainers[1].evaluation.overfit.update(0.9, 1.0, 0.5)) == 1
    fresh = diag.OverfitMonitor()
    for broken in (None, {"streak": "3"}, {"streak": -1, "warned": 1}):  # older or hand-made
        fresh.load_state_dict(broken)
        assert fresh.state_dict() == {"streak": 0, "warned": False}


# ---- memorisation and class shares -------------------------------------------------------------

class Replay(nn.Module):
    """A "generator" that returns stored images in turn, whatever z is."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images = images
        self.at = 0

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        idx = torch.arange(self.at, self.at + len(z)) % len(self.images)
        self.at += len(z)
        return self.images[idx]


def test_a_generator_of_training_images_is_all_near_copies(trained_judge) -> None:
    evaluator = Evaluator(tiny("dcgan-mnist-plain"), torch.device("cpu"), n=300)
    copier = evaluator.evaluate(Replay(evaluator.train_real[::7]), step=1).values
    assert copier["near_copies"] > 0.95 and copier["nn_fake"] < 0.05 * copier["nn_real"]
    fakes, nearest = evaluator.offenders
    assert fakes.shape == nearest.shape == (diag.OFFENDERS, 1, 28, 28)
    assert torch.allclose(fakes, nearest, atol=1e-5)  # each beside the digit it copies
    # held-out digits are new draws of the same digits: none is a near-copy
    spread = evaluator.held_real[diag.spread_pick(len(evaluator.held_real), 300)]
    honest = evaluator.evaluate(Replay(spread), step=2).values  # the digits sorted by class
    assert honest["near_copies"] == 0.0 and honest["nn_fake"] == pytest.approx(
        honest["nn_real"], rel=0.1)  # 300 spread over the same 1,000 held-out digits
    shares = shares_of(honest)  # held-out digits are balanced: every class about a tenth
    assert len(shares) == 10 and sum(shares) == pytest.approx(1.0)
    assert all(0.06 < s < 0.14 for s in shares)
    # real digits are as legible as the held-out reference; half-and-half blends are not
    assert honest["legible"] == pytest.approx(honest["legible_real"], abs=0.05)
    assert honest["legible_real"] > 0.9
    blends = (spread + spread.roll(150, 0)) / 2  # each digit over one of another class
    assert evaluator.evaluate(Replay(blends), step=4).values["legible"] < 0.6
    # a generator that only draws ones: one class, the others vanish from the strip
    ones = evaluator.held_real[evaluator.held_labels == 1]
    only = shares_of(evaluator.evaluate(Replay(ones), step=3).values)
    strip = share_strip(only)  # one glyph per class: the ones full, most others blank
    assert only[1] > 0.9 and strip[1] == SHADES[-1] and strip.count(" ") >= 7


def test_stacked_scores_say_how_much_kl_is_digit_skew(trained_judge) -> None:
    """A stacked-MNIST "generator" whose first channel is always a one: that channel's skew
    is nearly all of its KL, and the class strip shows ones at over a third."""
    evaluator = Evaluator(tiny("stacked-mnist"), torch.device("cpu"), n=1000)
    _, _, held, labels = load_judge(cache_dir=None)
    digits = held.float().div(127.5).sub(1)
    gen = torch.Generator().manual_seed(0)
    ones = digits[labels == 1]
    first = ones[torch.randint(0, len(ones), (1000,), generator=gen)]
    rest = digits[torch.randint(0, len(digits), (1000, 2), generator=gen)]
    values = evaluator.evaluate(Replay(torch.cat([first, rest[:, 0], rest[:, 1]], 1)), 1).values
    assert values["kl_digits"] > 0.8 * math.log(10)
    assert values["kl"] >= values["kl_digits"]
    # the rest of the KL is the finite sample: 1,000 samples over 1,000 modes
    assert values["kl"] - values["kl_digits"] < 0.6
    shares = shares_of(values)
    assert len(shares) == 10 and shares[1] > 0.36 and sum(shares) == pytest.approx(1.0)
    assert diagnosis_line(values).startswith("digit skew: KL")
    # real digits in every channel: legible as the floor's real triples are
    assert values["legible"] == pytest.approx(values["legible_real"], abs=0.05)
    assert values["legible_real"] > 0.9


def test_the_split_holds_out_a_fifth_and_train_digits_cuts_the_rest() -> None:
    whole = mnist_split(tiny("dcgan-mnist-plain"))
    assert (len(whole.train_images), len(whole.held_images)) == (4000, 1000)
    few = mnist_split(tiny("dcgan-mnist-plain", "train_digits=200"))
    assert len(few.train_images) == 200 and "200 trained on, 1,000 held out" in few.note
    # the subset comes from the training part: no held-out digit is ever trained on
    flat_held = few.held_images.flatten(1).float()
    assert torch.cdist(few.train_images.flatten(1).float(), flat_held).min() > 0
    with pytest.raises(DataError, match="train_digits 4,001 exceeds the 4,000"):
        mnist_split(tiny("dcgan-mnist-plain", "train_digits=4001"))
    assert cli("train", "--set", "train_digits=-1").returncode == 1


# ---- a run: recorded, shown, reported ----------------------------------------------------------

def test_a_run_records_the_diagnostics_and_eval_and_the_report_show_them(
        trained_judge, tmp_path: Path) -> None:
    from gantui.headless import follow
    from gantui.session import start
    from gantui.studies.report import report_run
    from gantui.ui.model import RunModel
    from gantui.ui.panels import class_strip_text

    cfg = tiny("dcgan-mnist-plain", "train_digits=64", "steps=4", "eval_every=2", "eval_samples=60",
               "sample_every=100", "checkpoint_every=4")
    session = start(cfg, "dcgan-mnist-plain", runs_dir=tmp_path, name="d", device="cpu")
    follow(session, 120)
    assert session.state == "finished"
    run = session.run_dir
    records = [json.loads(line) for line in (run / "quality.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        values = record["values"]
        assert -1 <= values["r_t"] <= 1
        assert 0 <= values["d_acc_held"] <= 1 and 0 <= values["d_acc_train"] <= 1
        assert 0 <= values["near_copies"] <= 1 and len(shares_of(values)) == 10
    assert (run / "samples" / "near-copies.png").is_file()

    model = RunModel()  # the dashboard's model, fed the run's quality events
    from gantui.events import Quality
    for r in records:
        model.apply(Quality(r["step"], r["values"], r["primary"], r["best_step"],
                            r["best_value"], r["seconds"]))
    assert [step for step, _ in model.class_history] == [2, 4]
    strip = class_strip_text(model.class_history, 20).plain.splitlines()
    assert len(strip) == 5 and strip[0].startswith("0,1 ") and strip[0].endswith("▀▀")
    assert "D calls real: train" in diagnosis_line(records[-1]["values"])
    assert "legible " in diagnosis_line(records[-1]["values"])

    shown = cli("eval", str(run), "-n", "60")
    assert shown.returncode == 0, shown.stderr
    assert "near_copies" in shown.stdout and "classes 0-9" in shown.stdout
    assert "legible_real" in shown.stdout
    assert "class_3" not in shown.stdout  # a strip, not ten rows

    page = report_run(run).with_name("report.md").read_text()
    assert "## Diagnostics" in page and "near-copies.png" in page and "class-shares.png" in page
    assert "legible (real)" in page
