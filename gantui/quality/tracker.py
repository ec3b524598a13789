"""The best score of a run so far, and the alarm when quality falls away from it.

Losses do not say when a GAN gets worse (mode collapse on a long run shows nothing special in
them); the primary quality metric does. :class:`QualityTracker` keeps the best
:class:`~gantui.quality.evaluate.Score`, says when a new one beats it (the trainer then writes
``checkpoints/best.pt``), and warns once per episode when the primary metric stays clearly
worse than its best for several evaluations in a row.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from gantui.quality.describe import (
    DESCRIPTIONS,
    describe_value,
    format_value,
    is_class_share,
    share_strip,
    shares_of,
)
from gantui.quality.evaluate import HIGHER_IS_BETTER, Score, is_better

PATIENCE = 3
"""Evaluations in a row clearly worse than the best before the alarm."""
WORSE_RATIO = 1.25
"""A lower-is-better metric is clearly worse above this many times its best..."""
WORSE_DROP = 0.05
"""...and a higher-is-better one below its best by more than this fraction of it."""


def clearly_worse(score: Score, best: Score) -> bool:
    """True when ``score``'s primary metric is clearly worse than the same metric of ``best``."""
    metric = score.primary
    if metric != best.primary or metric not in best.values:
        return False
    value, top = score.values.get(metric, math.nan), best.values[metric]
    if math.isnan(value):
        return True
    if HIGHER_IS_BETTER.get(metric, False):
        return value < top - WORSE_DROP * abs(top)
    return value > WORSE_RATIO * top + 1e-12


def describe(score: Score, metric: str | None = None) -> str:
    """``judge_fd 7.12`` style: one value of ``score``, compactly."""
    metric = metric or score.primary
    return describe_value(metric, score.values.get(metric, math.nan))


class QualityTracker:
    """Best score so far and the fall-away alarm; plain-value state for checkpoints."""

    def __init__(self, patience: int = PATIENCE) -> None:
        self.patience = patience
        self.best: Score | None = None
        self.latest: Score | None = None
        self._previous: Score | None = None
        self._worse = 0
        self._warned = False

    def update(self, score: Score) -> tuple[bool, list[tuple[str, str]]]:
        """Take one evaluation; returns (it is the new best, ``(kind, message)`` warnings)."""
        self.latest = score
        if is_better(score, self.best):
            self._previous, self.best = self.best, score
            self._worse = 0
            self._warned = False
            return True, []
        assert self.best is not None
        if not clearly_worse(score, self.best):
            self._worse = 0
            self._warned = False
            return False, []
        self._worse += 1
        if self._worse < self.patience or self._warned:
            return False, []
        self._warned = True
        best = self.best
        return False, [("quality", (
            f"quality fell away from its best: {describe(score)} now, "
            f"{describe(best, score.primary)} at step {best.step}, clearly worse for "
            f"{self._worse} evaluations in a row (mode collapse or instability?). The best "
            f"model is kept in checkpoints/best.pt (gantui sample RUN --best)"))]

    def revert_best(self) -> None:
        """Undo the last :meth:`update`'s new best (its checkpoint could not be written)."""
        self.best = self._previous

    def adopt(self, score: Score) -> bool:
        """Take ``score`` as the best if it beats the current one (a ``best.pt`` on disk from
        before a resume must never be overwritten by a worse model); True when taken."""
        if is_better(score, self.best):
            self.best = score
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """Plain values for a checkpoint."""
        return {"best": None if self.best is None else dataclasses.asdict(self.best),
                "latest": None if self.latest is None else dataclasses.asdict(self.latest),
                "worse": self._worse, "warned": self._warned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Mirror of :meth:`state_dict`; anything malformed starts afresh."""
        self.best = score_from_dict(state.get("best"))
        self.latest = score_from_dict(state.get("latest"))
        worse = state.get("worse", 0)
        self._worse = worse if isinstance(worse, int) and not isinstance(worse, bool) else 0
        self._warned = state.get("warned") is True


def score_from_dict(value: Any) -> Score | None:
    """A :class:`Score` from :func:`dataclasses.asdict` output (a checkpoint, quality.jsonl);
    None when malformed."""
    if not isinstance(value, dict):
        return None
    step, values, primary = value.get("step"), value.get("values"), value.get("primary")
    if not (isinstance(step, int) and isinstance(values, dict) and isinstance(primary, str)):
        return None
    clean = {str(k): float(v) for k, v in values.items()
             if isinstance(v, (int, float)) and not isinstance(v, bool)}
    seconds = value.get("seconds", 0.0)
    seconds = float(seconds) if isinstance(seconds, (int, float)) else 0.0
    return Score(step=step, values=clean, primary=primary, seconds=seconds)



def score_table(score: Score):
    """A rich table of every value of ``score``, the primary one first and marked."""
    from rich.table import Table

    table = Table(box=None, pad_edge=False)
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("better")
    table.add_column("what")
    names = sorted((k for k in score.values if not is_class_share(k)),
                   key=lambda k: (k != score.primary, k))
    shares = shares_of(score.values)
    if shares:  # one row for the class histogram rather than ten
        present = sum(1 for s in shares if s >= 0.01)
        table.add_row("classes 0-9", share_strip(shares), "", f"share of samples per class "
                      f"(darker = more; blank = none): {present} of {len(shares)} present")
    for name in names:
        shown = format_value(name, score.values[name])
        arrow = "higher" if HIGHER_IS_BETTER.get(name, False) else "lower"
        mark = " *" if name == score.primary else ""
        table.add_row(name + mark, shown, arrow, DESCRIPTIONS.get(name, ""))
    return table
