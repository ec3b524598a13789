"""Plot bucketing: width-bounded, spike-preserving, correct on a million points."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gantui.history import SMOOTHING_LEVELS, Series, ema

MILLION = 1_000_000


@pytest.fixture(scope="module")
def million() -> tuple[Series, np.ndarray]:
    rng = np.random.default_rng(0)
    values = rng.normal(0.0, 1.0, MILLION)
    values[123_457] = 1e6  # a one-step spike
    values[995_001] = -1e6  # and a dip
    series = Series()
    for start in range(0, MILLION, 100_000):  # grows through several reallocations
        stop = start + 100_000
        series.extend(np.arange(start, stop), values[start:stop])
    return series, values


@pytest.mark.parametrize("n", [1, 7, 80, 192, 1000])
def test_million_points_bucket_count_bounded_and_extremes_kept(million, n):
    series, values = million
    b = series.buckets(n)
    assert len(b) == n
    assert int(b.count.sum()) == MILLION
    assert b.hi.max() == 1e6 and b.lo.min() == -1e6
    assert np.all(b.lo <= b.hi)
    assert np.all(np.diff(b.x) > 0)
    assert b.x[0] >= 0 and b.x[-1] <= MILLION - 1


def test_million_points_each_bucket_is_exact_min_max(million):
    series, values = million
    b = series.buckets(97)
    edges = np.concatenate([[0], np.cumsum(b.count)])
    for i in (0, 13, 50, 96):
        chunk = values[edges[i]:edges[i + 1]]
        assert b.lo[i] == chunk.min() and b.hi[i] == chunk.max()


def test_window_keeps_only_recent_points(million):
    series, values = million
    b = series.buckets(50, window=10_000)
    assert int(b.count.sum()) == 10_000
    assert b.x[0] >= MILLION - 10_000
    assert b.lo.min() == -1e6  # the dip at 995,001 is inside the window
    assert b.hi.max() == values[-10_000:].max()


def test_short_history_is_one_bucket_per_point():
    series = Series()
    series.extend([10, 20, 30], [1.0, 3.0, 2.0])
    b = series.buckets(80)
    assert b.x.tolist() == [10, 20, 30]
    assert b.lo.tolist() == b.hi.tolist() == [1.0, 3.0, 2.0]
    assert len(Series().buckets(80)) == 0


def test_nonfinite_values_never_reach_the_plot():
    series = Series()
    series.extend([1, 2, 3, 4], [1.0, math.nan, math.inf, 2.0])
    assert series.nonfinite == 2
    b = series.buckets(10)
    assert b.x.tolist() == [1, 4]
    assert np.isfinite(series.buckets(10, smoothing=0.9).hi).all()


def reference_ema(values, alpha):
    out, prev = [], None
    for v in values:
        prev = v if prev is None else alpha * prev + (1 - alpha) * v
        out.append(prev)
    return np.array(out)


@pytest.mark.parametrize("alpha", [a for a in SMOOTHING_LEVELS if a] + [0.1])
def test_ema_matches_the_plain_loop(alpha):
    values = np.random.default_rng(1).normal(size=3000)
    assert np.allclose(ema(values, alpha), reference_ema(values, alpha), atol=1e-12)


def test_smoothing_is_incremental_and_consistent():
    values = np.random.default_rng(2).normal(size=2000)
    series = Series()
    series.extend(np.arange(700), values[:700])
    series.smoothed(0.9)  # cache the first part
    series.extend(np.arange(700, 2000), values[700:])
    assert np.allclose(series.smoothed(0.9), reference_ema(values, 0.9), atol=1e-12)
    assert series.buckets(2000, smoothing=0.9).hi.tolist() == pytest.approx(
        reference_ema(values, 0.9).tolist())


def test_extend_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        Series().extend([1, 2], [1.0])


def test_clear_empties_a_series_for_reuse() -> None:
    series = Series()
    series.extend([1, 2, 3], [1.0, float("nan"), 3.0])
    series.smoothed(0.9)
    series.clear()
    assert len(series) == 0 and series.nonfinite == 0 and series.last is None
    series.append(10, 5.0)
    assert series.steps.tolist() == [10] and series.smoothed(0.9).tolist() == [5.0]
