"""How quality values read to a person: names, units, one-line descriptions. Free of torch,
so the dashboard, ``gantui runs`` and ``gantui watch`` can show them and start fast."""

from __future__ import annotations

import math

PERCENT = frozenset({"hq", "cond_acc", "recon_acc", "precision", "recall", "coverage",
                     "judge_acc", "near_copies", "d_acc_train", "d_acc_held", "legible",
                     "legible_real"})
"""Fractions shown as percentages."""

DESCRIPTIONS = {
    "modes": "modes covered (ring 8, grid 25, stacked MNIST 1,000)",
    "hq": "high-quality samples (within 3 sigma of a mode)",
    "kl": "KL(mode histogram || uniform), nats (stacked MNIST)",
    "legible": "samples the judge reads with >= 90% confidence (stacked MNIST: channels)",
    "legible_real": "the same for real held-out images: what legible digits score",
    "kl_digits": "the part of kl that is digit skew within channels (the rest: dependence)",
    "modes_floor": "modes real stacked triples cover, scored alike (the floor)",
    "kl_floor": "KL of real stacked triples, scored alike (the floor)",
    "judge_fd": "Frechet distance on the judge's features (the digit judge's for MNIST)",
    "kid": "kernel distance on the judge's features",
    "kid_std": "its standard deviation over subsets",
    "is": "classifier score (the judge's 'inception score', at most the number of classes)",
    "classes": "classes present (>= 1% of samples)",
    "class_entropy": "class-histogram entropy (at most ln of the classes; ln 10 = 2.303)",
    "precision": "precision (k=5): samples on the real manifold",
    "recall": "recall (k=5): real data covered by samples",
    "density": "density (k=5)",
    "coverage": "coverage (k=5)",
    "cond_acc": "conditional accuracy: the judge's class of G(z, y) is y",
    "recon_l1": "reconstruction error |G(E(x), y) - x| per pixel ([-1, 1] scale), held-out",
    "recon_acc": "the judge's class of the reconstruction G(E(x), y) is y",
    "judge_acc": "the judge's own held-out accuracy (the yardstick)",
    "judge_floor": "the judge's floor: judge_fd of held-out real vs training real images",
    "fid": "FID (Inception, torch-fidelity)",
    "fid_kid": "kernel distance on Inception features (labelled data, beside the judge's)",
    "fid_kid_std": "its standard deviation over subsets",
    "rcfd": "random-conv Frechet distance: a proxy for trends and collapse only",
    "near_copies": "samples closer to a training image than any held-out real image is",
    "nn_fake": "median distance of a sample to its nearest training image (judge features)",
    "nn_real": "the same for held-out real images: what a new digit looks like",
    "r_t": "ADA's overfitting heuristic E[sign D(x_real)] over recent training batches",
    "d_acc_train": "D calls training images real (accuracy)",
    "d_acc_held": "D calls held-out real images real; far below d_acc_train: D overfits",
}
"""What each value measures, for ``gantui eval``'s table."""


STRIP_NAME = "near-copies.png"
"""The latest evaluation's worst near-copies over their nearest training images, under the
run's ``samples/`` folder (MNIST runs): the report and the zoom view show it."""
STRIP_COLUMNS = 8
"""Near-copies in that strip."""

CLASS_PREFIX = "class_"
"""Quality values ``class_0``, ``class_1``...: the share of samples the judge puts in each
class (unconditional MNIST runs; stacked MNIST: each digit's share over the three channels)."""


def shares_of(values: dict[str, float]) -> list[float]:
    """The class shares recorded in an evaluation's values (empty when none were)."""
    out: list[float] = []
    while f"{CLASS_PREFIX}{len(out)}" in values:
        out.append(values[f"{CLASS_PREFIX}{len(out)}"])
    return out


def diagnosis_line(values: dict[str, float]) -> str:
    """What says why, in one line: ``near-copies 0.1% · D real: train 98%, held-out 95% ·
    legible 88% (real 96%) · r_t +0.62``, or for stacked MNIST ``digit skew: KL 0.46 of 0.50 ·
    legible 29% (real 96%) · r_t +0.86`` (the parts that were measured)."""
    parts = []
    if "near_copies" in values:
        parts.append(f"near-copies {values['near_copies']:.1%}")
    if "d_acc_train" in values and "d_acc_held" in values:
        parts.append(f"D calls real: train {values['d_acc_train']:.0%}, held-out "
                     f"{values['d_acc_held']:.0%}")
    if "kl_digits" in values and "kl" in values:
        parts.append(f"digit skew: KL {values['kl_digits']:.2f} of {values['kl']:.2f}")
    if "legible" in values:
        real = (f" (real {values['legible_real']:.0%})" if "legible_real" in values else "")
        parts.append(f"legible {values['legible']:.0%}{real}")
    if math.isfinite(values.get("r_t", math.nan)):
        parts.append(f"r_t {values['r_t']:+.2f}")
    return " · ".join(parts)


def is_class_share(metric: str) -> bool:
    """True for the per-class shares ``class_0``, ``class_1``... (shown as a strip)."""
    return metric.startswith(CLASS_PREFIX) and metric[len(CLASS_PREFIX):].isdigit()


SHADES = " ░▒▓█"
"""Heat-strip shades from empty to full."""


def share_strip(shares: list[float]) -> str:
    """One character per class: a blank for a class no sample falls in, then lighter to
    darker up to twice the even share (a vanishing class fades before it goes blank)."""
    if not shares:
        return ""
    even = 1.0 / len(shares)
    out = []
    for share in shares:
        if not share > 0:
            out.append(SHADES[0])
        else:
            level = 1 + min(3, int(share / even * 2))  # 0-50% of even, 50-100, 100-150, 150+
            out.append(SHADES[level])
    return "".join(out)


def format_value(metric: str, value: float) -> str:
    """A value alone: ``7.12``, ``8``, ``97.1%``, ``4.10e-03``; ``nan`` / ``inf`` as such."""
    if not math.isfinite(value):
        return str(value)
    if metric in ("modes", "classes", "modes_floor"):
        return f"{value:g}"
    if metric in PERCENT or is_class_share(metric):
        return f"{value:.1%}"
    if metric == "r_t":
        return f"{value:+.2f}"
    if metric in ("kid", "kid_std", "fid_kid", "fid_kid_std"):
        return f"{value:.2e}"
    return f"{value:.4g}"


def describe_value(metric: str, value: float) -> str:
    """``judge_fd 7.12``, ``modes 8``, ``cond_acc 97.1%``, ``kid 4.10e-03``."""
    return f"{metric} {format_value(metric, value)}"
