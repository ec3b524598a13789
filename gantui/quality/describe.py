"""How quality values read to a person: names, units, one-line descriptions. Free of torch,
so the dashboard, ``gantui runs`` and ``gantui watch`` can show them and start fast."""

from __future__ import annotations

import math

PERCENT = frozenset({"hq", "cond_acc", "recon_acc", "precision", "recall", "coverage",
                     "judge_acc"})
"""Fractions shown as percentages."""

DESCRIPTIONS = {
    "modes": "modes covered (ring 8, grid 25, stacked MNIST 1,000)",
    "hq": "high-quality samples (within 3 sigma of a mode)",
    "kl": "KL(mode histogram || uniform), nats (stacked MNIST)",
    "modes_floor": "modes real stacked triples cover, scored alike (the floor)",
    "kl_floor": "KL of real stacked triples, scored alike (the floor)",
    "judge_fd": "Frechet distance on the digit judge's features",
    "kid": "kernel distance on the judge's features",
    "kid_std": "its standard deviation over subsets",
    "is": "classifier score (MNIST 'inception score', at most 10)",
    "classes": "classes present (>= 1% of samples)",
    "class_entropy": "class-histogram entropy (at most ln 10 = 2.303)",
    "precision": "precision (k=5): samples on the real manifold",
    "recall": "recall (k=5): real data covered by samples",
    "density": "density (k=5)",
    "coverage": "coverage (k=5)",
    "cond_acc": "conditional accuracy: the judge's class of G(z, y) is y",
    "recon_l1": "reconstruction error |G(E(x), y) - x| per pixel ([-1, 1] scale), held-out",
    "recon_acc": "the judge's class of the reconstruction G(E(x), y) is y",
    "judge_acc": "the judge's own held-out accuracy (the yardstick)",
    "fid": "FID (Inception, torch-fidelity)",
    "rcfd": "random-conv Frechet distance: a proxy for trends and collapse only",
}
"""What each value measures, for ``gantui eval``'s table."""


def format_value(metric: str, value: float) -> str:
    """A value alone: ``7.12``, ``8``, ``97.1%``, ``4.10e-03``; ``nan`` / ``inf`` as such."""
    if not math.isfinite(value):
        return str(value)
    if metric in ("modes", "classes", "modes_floor"):
        return f"{value:g}"
    if metric in PERCENT:
        return f"{value:.1%}"
    if metric in ("kid", "kid_std"):
        return f"{value:.2e}"
    return f"{value:.4g}"


def describe_value(metric: str, value: float) -> str:
    """``judge_fd 7.12``, ``modes 8``, ``cond_acc 97.1%``, ``kid 4.10e-03``."""
    return f"{metric} {format_value(metric, value)}"
