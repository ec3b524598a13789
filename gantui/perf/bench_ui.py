"""Benchmark: redraw cost of a dashboard chart over a long history.

``python -m gantui.perf.bench_ui`` prints how long bucketing plus building the plotext chart
takes for a 1,000,000-point history (two series, like the loss plot) at a few chart sizes.
"""

from __future__ import annotations

import statistics
import time

import numpy as np


def redraw_times(points: int = 1_000_000, sizes: tuple[tuple[int, int], ...] = ((46, 8),
                 (118, 20), (200, 40)), repeats: int = 15) -> list[dict[str, float]]:
    """Median and worst redraw time (ms) of a two-series chart per size and smoothing.

    Args:
        points: History length of each series.
        sizes: Chart sizes ``(columns, rows)`` to draw.
        repeats: Redraws measured per case.
    """
    from gantui.chart import Line, plot_text
    from gantui.history import Series

    rng = np.random.default_rng(0)
    steps = np.arange(points, dtype=np.float64)
    loss_d, loss_g = Series(points), Series(points)
    loss_d.extend(steps, 0.7 + 0.1 * rng.standard_normal(points))
    loss_g.extend(steps, 1.5 + 0.3 * rng.standard_normal(points))
    lines = [Line("loss_d", loss_d, 208), Line("loss_g", loss_g, 39)]
    results = []
    for smoothing in (0.0, 0.9):
        plot_text(lines, 80, 10, smoothing=smoothing)  # warm-up (and the one-off EMA pass)
        for width, height in sizes:
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                plot_text(lines, width, height, smoothing=smoothing)
                times.append((time.perf_counter() - start) * 1000)
            results.append({"width": width, "height": height, "smoothing": smoothing,
                            "median_ms": statistics.median(times), "max_ms": max(times)})
    return results


def main() -> None:
    """Print the redraw times."""
    print("chart redraw (bucket + plotext build + ANSI parse), 2 series x 1,000,000 points")
    for r in redraw_times():
        print(f"  {r['width']:>3}x{r['height']:<3} smoothing {r['smoothing']:<4} "
              f"median {r['median_ms']:6.1f} ms   max {r['max_ms']:6.1f} ms")


if __name__ == "__main__":
    main()
