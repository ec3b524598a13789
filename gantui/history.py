"""Metric histories that can be drawn at any length for the cost of the plot's width.

A :class:`Series` stores ``(step, value)`` pairs in growable NumPy arrays. For drawing it
hands out :class:`Buckets`: the visible part of the history (all of it, or the last
``window`` points), optionally smoothed with an exponential moving average, cut into at most
``n`` contiguous buckets that keep each bucket's minimum and maximum, so a one-step spike in
a million points still shows. Bucketing is a pair of ``reduceat`` calls, so redrawing costs
about the same for a hundred points as for a million.

Pure Python and NumPy: no UI imports, usable by any consumer of the event stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

SMOOTHING_LEVELS: tuple[float, ...] = (0.0, 0.6, 0.9, 0.98)
"""EMA factors the dashboard cycles through; 0 means raw values."""

_EMA_CHUNK = 256
"""Points per vectorised EMA chunk: small enough that alpha**-chunk stays far from overflow
for alpha >= 0.2 (smaller factors use a plain loop)."""

@dataclass(frozen=True)
class Buckets:
    """A width-bounded summary of a series, ready to plot.

    ``x`` is the step at the centre of each bucket; ``lo`` and ``hi`` are the smallest and
    largest (smoothed) values in it; ``count`` is how many raw points it covers. Buckets that
    cover only non-finite values are dropped.
    """

    x: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

class Series:
    """An append-only ``(step, value)`` history with cached EMA smoothing.

    Non-finite values are kept as NaN: they never reach a plot's scale, and the EMA carries
    the last finite input across them. ``nonfinite`` counts them.
    """

    def __init__(self, capacity: int = 1024) -> None:
        capacity = max(16, capacity)
        self._steps = np.empty(capacity, dtype=np.float64)
        self._values = np.empty(capacity, dtype=np.float64)
        self._n = 0
        self._ema: dict[float, tuple[np.ndarray, int]] = {}
        self.nonfinite = 0
        """How many appended values were NaN or infinite."""

    def __len__(self) -> int:
        return self._n

    @property
    def steps(self) -> np.ndarray:
        """The steps appended so far (a view; do not modify)."""
        return self._steps[: self._n]

    @property
    def values(self) -> np.ndarray:
        """The raw values appended so far, non-finite ones as NaN (a view; do not modify)."""
        return self._values[: self._n]

    @property
    def last(self) -> float | None:
        """The most recent value, or None when empty."""
        return float(self._values[self._n - 1]) if self._n else None

    def clear(self) -> None:
        """Forget every point (the arrays are kept for reuse)."""
        self._n = 0
        self._ema.clear()
        self.nonfinite = 0

    def append(self, step: float, value: float) -> None:
        """Add one point."""
        self.extend([step], [value])

    def extend(self, steps: list[float] | np.ndarray, values: list[float] | np.ndarray) -> None:
        """Add many points at once (a follower catching up on a long run, a benchmark).

        Raises:
            ValueError: ``steps`` and ``values`` differ in length.
        """
        s = np.asarray(steps, dtype=np.float64).ravel()
        v = np.asarray(values, dtype=np.float64).ravel()
        if len(s) != len(v):
            raise ValueError(f"{len(s)} steps but {len(v)} values")
        bad = ~np.isfinite(v)
        if bad.any():
            v = v.copy()
            v[bad] = np.nan
            self.nonfinite += int(bad.sum())
        need = self._n + len(v)
        if need > len(self._values):
            size = max(need, 2 * len(self._values))
            self._steps = _grow(self._steps, size)
            self._values = _grow(self._values, size)
        self._steps[self._n:need] = s
        self._values[self._n:need] = v
        self._n = need

    def smoothed(self, alpha: float) -> np.ndarray:
        """The whole history smoothed by ``y[i] = alpha * y[i-1] + (1 - alpha) * x[i]``.

        Computed incrementally: only points added since the last call are processed.
        """
        if alpha <= 0:
            return self.values
        cached, done = self._ema.get(alpha, (np.empty(0), 0))
        if done < self._n:
            if len(cached) < len(self._values):
                cached = _grow(cached, len(self._values))
            prev = cached[done - 1] if done else math.nan
            cached[done:self._n] = ema(self._values[done:self._n], alpha, prev)
            self._ema[alpha] = (cached, self._n)
        return cached[: self._n]

    def buckets(self, n: int, window: int | None = None, smoothing: float = 0.0) -> Buckets:
        """Summarise the last ``window`` points (all when None) into at most ``n`` buckets.

        Args:
            n: Maximum number of buckets, typically the plot's width in cells.
            window: Keep only the most recent ``window`` points; None keeps everything.
            smoothing: EMA factor in ``[0, 1)``; 0 plots raw values.

        Returns:
            Buckets with ``len <= n``; when the view has no more than ``n`` points each point
            is its own bucket.
        """
        n = max(1, int(n))
        start = 0 if window is None else max(0, self._n - int(window))
        values = self.smoothed(smoothing)[start:]
        steps = self.steps[start:]
        total = len(values)
        if total == 0:
            empty = np.empty(0)
            return Buckets(empty, empty, empty, np.empty(0, dtype=np.int64))
        if total <= n:
            edges = np.arange(total, dtype=np.int64)
            count = np.ones(total, dtype=np.int64)
            x, lo, hi = steps.copy(), values.copy(), values.copy()
        else:
            edges = np.linspace(0, total, n + 1).astype(np.int64)[:-1]
            count = np.diff(np.append(edges, total))
            # fmin/fmax ignore NaN unless a whole bucket is NaN.
            lo = np.fmin.reduceat(values, edges)
            hi = np.fmax.reduceat(values, edges)
            last = edges + count - 1
            x = (steps[edges] + steps[last]) / 2.0
        keep = np.isfinite(lo) & np.isfinite(hi)
        if not keep.all():
            x, lo, hi, count = x[keep], lo[keep], hi[keep], count[keep]
        return Buckets(x, lo, hi, count)

def ema(values: np.ndarray, alpha: float, prev: float = math.nan) -> np.ndarray:
    """Exponential moving average of ``values`` continuing from ``prev`` (NaN: start fresh).

    A NaN input counts as a repeat of the last finite input. Vectorised in chunks, so a
    million points take milliseconds rather than a Python loop's second.
    """
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    if len(x) == 0:
        return out
    x = _ffill(x, prev)
    if math.isnan(prev):
        first = np.flatnonzero(np.isfinite(x))
        if len(first) == 0:
            out[:] = np.nan
            return out
        out[: first[0]] = np.nan
        prev = x[first[0]]
        begin = int(first[0])
    else:
        begin = 0
    if alpha < 0.2:  # alpha**-chunk could overflow: the plain loop is exact and rarely used
        for i in range(begin, len(x)):
            prev = alpha * prev + (1 - alpha) * x[i]
            out[i] = prev
        return out
    powers = alpha ** np.arange(1, _EMA_CHUNK + 1)  # alpha^(j+1)
    inv = alpha ** -np.arange(_EMA_CHUNK)  # alpha^-j
    for lo in range(begin, len(x), _EMA_CHUNK):
        chunk = x[lo:lo + _EMA_CHUNK]
        k = len(chunk)
        # y[j] = alpha^(j+1) prev + (1-alpha) sum_{i<=j} alpha^(j-i) x[i]
        acc = np.cumsum(chunk * inv[:k]) * (powers[:k] / alpha)
        y = powers[:k] * prev + (1 - alpha) * acc
        out[lo:lo + k] = y
        prev = y[-1]
    return out

def _ffill(x: np.ndarray, prev: float) -> np.ndarray:
    """Replace NaNs with the last finite value before them (``prev`` before the first)."""
    bad = np.isnan(x)
    if not bad.any():
        return x
    idx = np.where(bad, 0, np.arange(len(x)))
    np.maximum.accumulate(idx, out=idx)
    filled = x[idx]
    # Leading NaNs (no finite value yet in this slice) take ``prev``.
    lead = bad & (idx == 0) & bad[0]
    filled[lead] = prev
    return filled

def _grow(arr: np.ndarray, size: int) -> np.ndarray:
    out = np.empty(size, dtype=arr.dtype)
    out[: len(arr)] = arr
    return out
