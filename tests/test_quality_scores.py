"""Scores on tensors with known answers: FD, KID, classifier score, class histogram, PRDC."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gantui.quality import scores

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def gaussian(n: int, mean: list[float], std: list[float], seed: int) -> torch.Tensor:
    return torch.tensor(mean) + torch.tensor(std) * torch.randn(n, len(mean), generator=gen(seed))


# ---- Fréchet distance -----------------------------------------------------------------------

def test_fd_of_identical_sets_is_zero() -> None:
    a = torch.randn(500, 32, generator=gen())
    assert scores.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_fd_from_stats_matches_the_analytic_value_for_diagonal_gaussians() -> None:
    # FD(N(m1, diag s1^2), N(m2, diag s2^2)) = |m1 - m2|^2 + sum (s1 - s2)^2
    m1, m2 = torch.tensor([0.0, 1.0, -2.0]), torch.tensor([1.0, 1.0, 0.0])
    s1, s2 = torch.tensor([1.0, 2.0, 0.5]), torch.tensor([3.0, 1.0, 0.5])
    expected = float(((m1 - m2) ** 2).sum() + ((s1 - s2) ** 2).sum())  # 5 + 5 = 10
    got = scores.frechet_from_stats(m1, torch.diag(s1**2), m2, torch.diag(s2**2))
    assert got == pytest.approx(expected, rel=1e-10)


def test_fd_of_samples_approaches_the_analytic_value() -> None:
    a = gaussian(40_000, [0.0, 1.0, -2.0], [1.0, 2.0, 0.5], seed=1)
    b = gaussian(40_000, [1.0, 1.0, 0.0], [3.0, 1.0, 0.5], seed=2)
    assert scores.frechet_distance(a, b) == pytest.approx(10.0, rel=0.03)


def test_fd_is_symmetric_and_matches_sqrtm_for_full_covariances() -> None:
    scipy_linalg = pytest.importorskip("scipy.linalg")
    a = torch.randn(300, 8, generator=gen(3)) @ torch.randn(8, 8, generator=gen(4))
    b = torch.randn(200, 8, generator=gen(5)) @ torch.randn(8, 8, generator=gen(6)) + 0.5
    ab, ba = scores.frechet_distance(a, b), scores.frechet_distance(b, a)
    assert ab == pytest.approx(ba, rel=1e-9)
    (mu1, c1), (mu2, c2) = scores.gaussian_stats(a), scores.gaussian_stats(b)
    c1, c2 = c1.numpy(), c2.numpy()
    root = scipy_linalg.sqrtm(c1 @ c2).real
    ref = float(((mu1 - mu2) ** 2).sum()) + np.trace(c1) + np.trace(c2) - 2 * np.trace(root)
    assert ab == pytest.approx(ref, rel=1e-6)


def test_fd_handles_rank_deficient_covariances() -> None:
    # fewer rows than dimensions: singular covariances, as with 2048-d features of few images
    a, b = torch.randn(20, 64, generator=gen(7)), torch.randn(30, 64, generator=gen(8))
    value = scores.frechet_distance(a, b)
    assert math.isfinite(value) and value > 0


def test_gaussian_stats_are_unbiased_and_need_two_rows() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    mu, cov = scores.gaussian_stats(x)
    assert mu.dtype == torch.float64
    assert mu.tolist() == [2.0, 4.0]
    assert cov.tolist() == [[2.0, 4.0], [4.0, 8.0]]  # N - 1 in the denominator, like np.cov
    with pytest.raises(ValueError):
        scores.gaussian_stats(x[:1])


# ---- KID --------------------------------------------------------------------------------------

def test_kid_is_near_zero_for_one_distribution_and_positive_for_shifted_ones() -> None:
    a, b = torch.randn(2000, 16, generator=gen(1)), torch.randn(2000, 16, generator=gen(2))
    same, same_std = scores.kid(a, b, subsets=20, subset_size=500)
    shifted, _ = scores.kid(a, b + 0.3, subsets=20, subset_size=500)
    assert abs(same) < 0.005 and same_std < 0.01
    assert shifted > 0.1
    assert shifted > 20 * abs(same)


def test_kid_is_deterministic_for_a_seed_and_leaves_the_global_rng_alone() -> None:
    a, b = torch.randn(300, 4, generator=gen(1)), torch.randn(200, 4, generator=gen(2))
    before = torch.get_rng_state()
    first = scores.kid(a, b, subsets=5, subset_size=100, seed=3)
    assert scores.kid(a, b, subsets=5, subset_size=100, seed=3) == first
    assert scores.kid(a, b, subsets=5, subset_size=100, seed=4) != first
    assert torch.equal(torch.get_rng_state(), before)


def test_kid_caps_the_subset_size_by_the_smaller_set() -> None:
    a, b = torch.randn(50, 4, generator=gen(1)), torch.randn(30, 4, generator=gen(2))
    mean, std = scores.kid(a, b, subsets=3, subset_size=1000)
    assert math.isfinite(mean) and math.isfinite(std)


def test_kid_matches_torch_fidelity_on_one_full_subset() -> None:
    metric_kid = pytest.importorskip("torch_fidelity.metric_kid")
    a = torch.randn(100, 8, generator=gen(1)).abs()
    b = torch.randn(100, 8, generator=gen(2)).abs() + 0.1
    # one subset holding every row: the random draw cannot matter
    mean, _ = scores.kid(a, b, subsets=1, subset_size=100)
    x, y = a.double().numpy(), b.double().numpy()
    kw = {"kid_kernel_poly_degree": 3, "kid_kernel_poly_gamma": None,
          "kid_kernel_poly_coef0": 1}
    ref = metric_kid.mmd2(metric_kid.kernel_poly(x, x, **kw), metric_kid.kernel_poly(x, y, **kw),
                          metric_kid.kernel_poly(y, y, **kw))
    assert mean == pytest.approx(float(ref), rel=1e-9)


# ---- classifier score and class histogram ----------------------------------------------------

@pytest.mark.parametrize("k", [1, 2, 10])
def test_classifier_score_of_confident_uniform_predictions_is_k(k: int) -> None:
    probs = torch.nn.functional.one_hot(torch.arange(100 * k) % k, k).float()
    assert scores.classifier_score(probs) == pytest.approx(k)
    assert scores.classifier_score(probs, splits=10) == pytest.approx(k)


def test_classifier_score_of_a_single_class_or_of_unsure_predictions_is_one() -> None:
    single = torch.zeros(50, 10)
    single[:, 3] = 1.0
    assert scores.classifier_score(single) == pytest.approx(1.0)
    assert scores.classifier_score(torch.full((50, 10), 0.1)) == pytest.approx(1.0)


def test_class_histogram_edge_cases() -> None:
    assert scores.class_histogram(torch.empty(0, dtype=torch.long), 10) == (0, 0.0)
    assert scores.class_histogram(torch.full((100,), 7), 10) == (1, 0.0)
    present, entropy = scores.class_histogram(torch.arange(1000) % 10, 10)
    assert present == 10 and entropy == pytest.approx(math.log(10))
    # 1% counts as present, less does not
    exactly = torch.tensor([0] * 99 + [1])
    assert scores.class_histogram(exactly, 10)[0] == 2
    below = torch.tensor([0] * 1001 + [1] * 10)
    assert scores.class_histogram(below, 10)[0] == 1
    present, entropy = scores.class_histogram(torch.tensor([0, 0, 1, 1]), 10)
    assert present == 2 and entropy == pytest.approx(math.log(2))


def test_conditional_accuracy() -> None:
    assert scores.conditional_accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) \
        == 0.5
    assert scores.conditional_accuracy(torch.empty(0), torch.empty(0)) == 0.0
    with pytest.raises(ValueError):
        scores.conditional_accuracy(torch.zeros(3), torch.zeros(4))


# ---- precision, recall, density, coverage ----------------------------------------------------

def test_prdc_of_a_set_against_a_copy_of_itself_is_about_one() -> None:
    real = torch.randn(1000, 16, generator=gen(1))
    near_copy = real + 1e-3 * torch.randn(real.shape, generator=gen(2))
    out = scores.prdc(real, near_copy)
    assert out["precision"] == pytest.approx(1.0, abs=0.01)
    assert out["recall"] == pytest.approx(1.0, abs=0.01)
    assert out["coverage"] == pytest.approx(1.0, abs=0.01)
    assert 0.9 < out["density"] < 1.25  # (k + 1) / k at most: each point is in its own ball


def test_prdc_of_a_fresh_sample_of_the_same_distribution_is_high() -> None:
    real, fake = torch.randn(1000, 16, generator=gen(1)), torch.randn(1000, 16, generator=gen(2))
    out = scores.prdc(real, fake)
    assert out["precision"] > 0.75 and out["recall"] > 0.75
    assert out["coverage"] > 0.9 and 0.8 < out["density"] < 1.2


def test_prdc_of_a_collapsed_fake_set_has_no_recall_or_coverage() -> None:
    real = torch.randn(1000, 16, generator=gen(1))
    collapsed = real[:1] + 1e-3 * torch.randn(1000, 16, generator=gen(2))
    out = scores.prdc(real, collapsed)
    assert out["precision"] == 1.0  # every fake is a faithful copy of one real point...
    assert out["recall"] < 0.01 and out["coverage"] < 0.01  # ...and that is all there is


def test_prdc_in_small_chunks_gives_the_same_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    real, fake = torch.randn(300, 8, generator=gen(1)), torch.randn(200, 8, generator=gen(2))
    whole = scores.prdc(real, fake, k=3)
    monkeypatch.setattr(scores, "_chunk_rows", lambda n_cols, budget=0: 7)
    assert scores.prdc(real, fake, k=3) == pytest.approx(whole)


def test_prdc_needs_more_than_k_points() -> None:
    with pytest.raises(ValueError):
        scores.prdc(torch.randn(5, 2), torch.randn(50, 2), k=5)
