"""Quality metrics and health signals, computed from plain values on the host."""

from __future__ import annotations

import statistics
from collections import deque

import torch

from gantui.data.sources import RING_SIGMA, mixture, ring_modes


def ring_coverage(points: torch.Tensor, sigma: float = RING_SIGMA) -> tuple[int, float]:
    """:func:`mode_coverage` on the 8-Gaussian ring."""
    return mode_coverage(points, ring_modes(), sigma)


def mixture_coverage(points: torch.Tensor, dataset: str) -> tuple[int, float]:
    """:func:`mode_coverage` on the mixture of a 2-D data set (``ring8``, ``grid25``)."""
    centres, sigma, _ = mixture(dataset)
    return mode_coverage(points, centres, sigma)


def mode_coverage(points: torch.Tensor, modes: torch.Tensor, sigma: float
                  ) -> tuple[int, float]:
    """Mode coverage of 2-D samples of a Gaussian mixture, as VEEGAN and PacGAN count it.

    A sample within 3 sigma of its nearest mode is high quality; a mode is covered when it is
    the nearest mode of at least one high-quality sample. Non-finite samples are low quality.

    Returns:
        ``(modes covered, fraction of high-quality samples)``.
    """
    modes = modes.to(points.device, points.dtype)
    dist = torch.cdist(points, modes)  # (N, K)
    nearest, which = dist.min(dim=1)
    good = nearest <= 3 * sigma
    covered = int(torch.unique(which[good]).numel())
    return covered, float(good.float().mean()) if len(points) else 0.0


def diversity(samples: torch.Tensor) -> float:
    """Mean pairwise L2 distance between samples, scaled by 1/sqrt(dim).

    Identical samples give 0; a collapsing generator shows as a falling value.
    """
    flat = samples.detach().float().flatten(1)
    if flat.shape[0] < 2:
        return 0.0
    return float(torch.pdist(flat).mean() / flat.shape[1] ** 0.5)


class HealthMonitor:
    """Turns the metric stream into warnings worded for a person, once per episode.

    Each check re-arms when its condition clears, so a recurring problem warns again.
    """

    DATA_WAIT_WARN = 0.25
    """Share of time waiting for batches above which, sustained, the data is the bottleneck."""

    def __init__(self, patience: int = 5, data_fix: str = "") -> None:
        """
        Args:
            patience: Log intervals a condition must last before it warns.
            data_fix: What to do when the data pipeline is the bottleneck, for the warning.
        """
        self.patience = patience
        self.data_fix = data_fix
        self._wait_streak = 0
        self._wait_warned = False
        self._d_wins_streak = 0
        self._d_wins_warned = False
        self._grads: deque[float] = deque(maxlen=50)
        self._grad_warned = False
        self._peak_diversity = 0.0
        self._previews = 0
        self._collapse_warned = False

    def on_metrics(self, d_real: float, d_fake: float, grad_g: float,
                   grad_d: float, data_wait: float = 0.0) -> list[tuple[str, str]]:
        """Check one log interval; returns ``(kind, message)`` warnings."""
        out: list[tuple[str, str]] = []
        self._check_data_wait(data_wait, out)
        if d_real > 0.9 and d_fake < 0.1:
            self._d_wins_streak += 1
        else:
            self._d_wins_streak = 0
            self._d_wins_warned = False
        if self._d_wins_streak >= self.patience and not self._d_wins_warned:
            self._d_wins_warned = True
            out.append(("d_wins", f"the discriminator is winning: D(x)={d_real:.2f}, "
                        f"D(G(z))={d_fake:.3f} for {self._d_wins_streak} log intervals; G gets "
                        f"little signal. Try a lower lr_d, label_smoothing=0.1 or the "
                        f"nonsaturating loss"))
        grad = max(grad_g, grad_d)
        if len(self._grads) >= 5:
            typical = statistics.median(self._grads)
            exploding = grad > 1e3 or (typical > 0 and grad > 10 * typical)
            if exploding and not self._grad_warned:
                self._grad_warned = True
                which = "G" if grad_g >= grad_d else "D"
                out.append(("grad_explode", f"gradients are exploding: |grad {which}| = "
                            f"{grad:.3g}, {grad / max(typical, 1e-12):.0f}x the recent median. "
                            f"Training is unstable; lower the learning rates"))
            elif not exploding:
                self._grad_warned = False
        self._grads.append(grad)
        return out

    def _check_data_wait(self, data_wait: float, out: list[tuple[str, str]]) -> None:
        if data_wait > self.DATA_WAIT_WARN:
            self._wait_streak += 1
        elif not data_wait >= 0.1:  # NaN (not recorded) clears too
            self._wait_streak = 0
            self._wait_warned = False
        if self._wait_streak >= self.patience and not self._wait_warned:
            self._wait_warned = True
            fix = f" {self.data_fix}" if self.data_fix else ""
            out.append(("data", f"the data pipeline is the bottleneck: the trainer waited for "
                        f"batches {data_wait:.0%} of the time, {self._wait_streak} log "
                        f"intervals running.{fix}"))

    def on_samples(self, value: float) -> list[tuple[str, str]]:
        """Check the fixed-noise diversity; warns when it falls below half its peak."""
        self._previews += 1
        out: list[tuple[str, str]] = []
        if self._previews <= 2:  # early samples are noise: diverse for the wrong reason
            return out
        self._peak_diversity = max(self._peak_diversity, value)
        if value < 0.5 * self._peak_diversity and not self._collapse_warned:
            self._collapse_warned = True
            out.append(("collapse", f"sample diversity fell to {value:.3f} from a peak of "
                        f"{self._peak_diversity:.3f}: the generator may be collapsing onto a few "
                        f"modes. Compare the preview grid; consider resuming an earlier "
                        f"checkpoint"))
        elif value > 0.75 * self._peak_diversity:
            self._collapse_warned = False
        return out
