"""The evaluation harness on ring8, and how scores are ranked."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gantui import config
from gantui.data.sources import ring_modes
from gantui.quality.evaluate import (
    EvaluationError,
    Evaluator,
    Score,
    is_better,
    primary_order,
)


class Points(nn.Module):
    """A ring "generator" that returns fixed points in turn, ignoring z."""

    def __init__(self, points: torch.Tensor) -> None:
        super().__init__()
        self.points = points

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        idx = torch.arange(len(z)) % len(self.points)
        return self.points[idx]


def ring_evaluator(n: int | None = None) -> Evaluator:
    return Evaluator(config.load("ring-8")[1], torch.device("cpu"), n=n)


def test_ring_mode_centres_cover_all_modes_at_full_quality() -> None:
    ev = ring_evaluator()
    assert ev.kind == "ring" and ev.n == 2500
    score = ev.evaluate(Points(ring_modes()), step=7)
    assert score.values == {"modes": 8.0, "hq": 1.0}
    assert score.primary == "modes" and score.step == 7


def test_a_collapsed_ring_generator_covers_one_mode() -> None:
    score = ring_evaluator(n=200).evaluate(Points(ring_modes()[2:3]), step=1)
    assert score.values == {"modes": 1.0, "hq": 1.0}
    far = ring_evaluator(n=200).evaluate(Points(torch.zeros(1, 2)), step=1)
    assert far.values == {"modes": 0.0, "hq": 0.0}


def test_a_real_ring_generator_runs_and_spares_the_global_rng() -> None:
    from gantui.models.builtin import build_models

    cfg = config.load("ring-8")[1]
    G, _ = build_models(cfg)
    ev = Evaluator(cfg, torch.device("cpu"))
    before = torch.get_rng_state()
    first, second = ev.evaluate(G, 0), ev.evaluate(G, 1)
    assert torch.equal(torch.get_rng_state(), before)
    assert first.values == second.values and G.training
    assert 0 <= first.values["modes"] <= 8 and 0 <= first.values["hq"] <= 1


def test_non_finite_ring_points_count_as_low_quality() -> None:
    points = torch.cat([ring_modes(), torch.full((8, 2), float("nan"))])
    assert ring_evaluator(n=16).evaluate(Points(points), step=0).values == {
        "modes": 8.0, "hq": 0.5}


def test_a_generator_of_the_wrong_shape_is_a_clear_error() -> None:
    with pytest.raises(EvaluationError, match="shape"):
        ring_evaluator(n=20).evaluate(Points(torch.zeros(1, 3)), step=0)


def test_too_small_n_is_refused() -> None:
    with pytest.raises(EvaluationError):
        ring_evaluator(n=3)


# ---- ranking -----------------------------------------------------------------------------------

def score(primary: str, **values: float) -> Score:
    return Score(step=0, values=values, primary=primary, seconds=0.0)


def test_primary_orders() -> None:
    assert primary_order("ring", False) == [("modes", True), ("hq", True)]
    assert primary_order("mnist", False) == [("judge_fd", False)]
    assert primary_order("mnist", True) == [("cond_acc", True), ("judge_fd", False)]
    assert primary_order("folder", False) == [("fid", False), ("rcfd", False)]
    with pytest.raises(EvaluationError):
        primary_order("audio", False)


def test_anything_beats_nothing_and_ties_are_not_better() -> None:
    a = score("judge_fd", judge_fd=5.0)
    assert is_better(a, None)
    assert not is_better(a, score("judge_fd", judge_fd=5.0))


def test_lower_fd_is_better() -> None:
    assert is_better(score("judge_fd", judge_fd=4.0), score("judge_fd", judge_fd=5.0))
    assert not is_better(score("judge_fd", judge_fd=6.0), score("judge_fd", judge_fd=5.0))


def test_ring_ranks_modes_first_then_quality() -> None:
    assert is_better(score("modes", modes=8, hq=0.5), score("modes", modes=7, hq=0.99))
    assert is_better(score("modes", modes=8, hq=0.9), score("modes", modes=8, hq=0.8))
    assert not is_better(score("modes", modes=8, hq=0.8), score("modes", modes=8, hq=0.9))


def test_conditional_mnist_ranks_accuracy_first_then_fd() -> None:
    a = score("cond_acc", cond_acc=0.9, judge_fd=20.0)
    assert is_better(a, score("cond_acc", cond_acc=0.8, judge_fd=2.0))
    assert is_better(score("cond_acc", cond_acc=0.9, judge_fd=10.0), a)


def test_folders_rank_by_fid_when_both_have_it_else_by_rcfd() -> None:
    assert is_better(score("fid", fid=30.0, rcfd=9.0), score("fid", fid=40.0, rcfd=1.0))
    assert is_better(score("rcfd", rcfd=1.0), score("rcfd", rcfd=2.0))
    assert is_better(score("rcfd", rcfd=1.0), score("fid", fid=40.0, rcfd=2.0))


def test_nan_is_worst_and_incomparable_scores_favour_the_new_one() -> None:
    assert is_better(score("judge_fd", judge_fd=1e9), score("judge_fd", judge_fd=math.nan))
    assert not is_better(score("judge_fd", judge_fd=math.nan), score("judge_fd", judge_fd=1e9))
    assert is_better(score("fid", fid=50.0), score("modes", modes=8, hq=1.0))
