"""The evaluation room: scoring G between steps, and keeping the best model.

Every ``eval_every`` steps (and once at the end of a finished run) rank 0 scores the generator
the run shows (the EMA one when on) through :class:`~gantui.quality.evaluate.Evaluator`,
records it in ``quality.jsonl``, and writes ``best.pt`` whenever the primary metric improves.
A failing evaluation is reported once and switches evaluation off: a metric never ends a run.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

from gantui import events as ev
from gantui.engine import checkpoint as ckpt
from gantui.quality import diagnostics as diag
from gantui.quality.describe import STRIP_NAME
from gantui.quality.evaluate import Evaluator, Score
from gantui.quality.tracker import QualityTracker, describe
from gantui.text import safe

if TYPE_CHECKING:
    from gantui.engine.trainer import Trainer


class Evaluation:
    """The run's quality: its tracker (best and latest, saved in checkpoints) and evaluator."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        self.tracker = QualityTracker()
        self._evaluator: Evaluator | None = None
        self.broken = False
        self.signs = diag.RealSigns(diag.real_threshold(trainer.cfg.loss))
        """sign(D(x_real)) summed over the training batches since the last evaluation."""
        self.overfit = diag.OverfitMonitor()

    def final_due(self) -> bool:
        """At the end of a finished run (not a stop: a stop must be quick, and a resumed run
        must evaluate at the same steps as a straight one), unless the last step was just
        evaluated."""
        t = self.t
        every = t.cfg.eval_every
        latest = self.tracker.latest
        return (t.world.main and bool(every) and not self.broken and not t.stopping
                and t.step >= every and (latest is None or latest.step != t.step))

    def evaluate(self) -> Score | None:
        """Score G between steps; record, emit, keep the best model (rank 0)."""
        t = self.t
        if self.broken or not t.world.main:
            return None
        started = time.perf_counter()
        try:
            if self._evaluator is None:
                cfg = t.cfg
                self._evaluator = Evaluator(cfg, t.device, n=cfg.eval_samples or None,
                                            fid_weights=cfg.fid_weights,
                                            log=lambda m: t.emit(ev.Note(t.step, m)))
            score = self._evaluator.evaluate(t.G_eval, t.step, encoder=t.E)
            score, warnings = self._diagnose(self._evaluator, score)
        except Exception as exc:  # noqa: BLE001 - see the module's docstring
            self.broken = True
            t.emit(ev.Alert(t.step, "error", f"quality evaluation failed "
                            f"({type(exc).__name__}: {safe(exc, 200)}); it is off for the "
                            f"rest of this run"))
            return None
        finally:
            t.G.train()
            if t.E is not None:
                t.E.train()
            t.not_training(time.perf_counter() - started)
        improved, fell = self.tracker.update(score)
        warnings += fell
        if improved and not self._save_best(score):
            self.tracker.revert_best()  # the best claimed must be the one on disk
        best = self.tracker.best or score
        t.emit(ev.Quality(t.step, dict(score.values), score.primary, best.step,
                          best.values.get(score.primary, math.nan), score.seconds))
        for kind, message in warnings:
            t.emit(ev.Alert(t.step, kind, message))
        return score

    def _diagnose(self, evaluator: Evaluator, score: Score
                  ) -> tuple[Score, list[tuple[str, str]]]:
        """Add what says why to ``score``: ADA's ``r_t`` (every run), and for MNIST runs D's
        accuracy on training against held-out digits (the ``overfit`` warning) and the
        near-copies strip (``samples/near-copies.png``)."""
        t = self.t
        started = time.perf_counter()
        values = dict(score.values)
        values["r_t"] = self.signs.take()
        warnings: list[tuple[str, str]] = []
        if evaluator.kind == "mnist":
            held, held_y = evaluator.held_real, evaluator.held_labels
            pick = diag.spread_pick(len(evaluator.train_real), len(held))
            train, train_y = evaluator.train_real[pick], evaluator.train_labels[pick]
            clusters = getattr(t.batches, "clusters", None)
            if clusters is not None:  # D is told clusters, not classes: as it trained
                labels = t.batches.labels
                train_y = (labels[pick.to(labels.device)].cpu()
                           if len(labels) == len(evaluator.train_real) else clusters.assign(train))
                held_y = clusters.assign(held)
            elif not t.cfg.conditional:
                train_y = held_y = None
            common = {"threshold": diag.real_threshold(t.cfg.loss),
                      "batch_size": t.cfg.batch_size, "device": t.device}
            values["d_acc_train"] = diag.d_accuracy(t.D, train, train_y, **common)
            values["d_acc_held"] = diag.d_accuracy(t.D, held, held_y, **common)
            warnings = self.overfit.update(values["r_t"], values["d_acc_train"],
                                           values["d_acc_held"])
            if evaluator.offenders is not None:
                strip = diag.offender_strip(*evaluator.offenders)
                try:
                    t.store.save_grid(t.step, strip, STRIP_NAME)
                except OSError as exc:
                    t.write_warning(exc, STRIP_NAME, f"samples/{STRIP_NAME}")
                else:
                    t.writable(STRIP_NAME)
        seconds = score.seconds + time.perf_counter() - started
        return Score(score.step, values, score.primary, seconds), warnings

    def _save_best(self, score: Score) -> bool:
        """Write ``best.pt`` for ``score``; False when it could not be written."""
        t = self.t
        if not t.params_finite():
            return False
        state = t.state_dict()
        state["best"] = {"step": score.step, "metric": score.primary,
                         "value": score.values.get(score.primary), "values": dict(score.values)}
        started = time.perf_counter()
        try:
            path = t.store.save_best(state)
        except OSError as exc:
            t.emit(ev.Alert(t.step, "error", f"{ckpt.write_failure(exc, t.store.path)}; the "
                            f"best checkpoint on disk stays; training continues"))
            return False
        finally:
            t.not_training(time.perf_counter() - started)
        shown = dict.fromkeys(m for m in (score.primary, "hq", "judge_fd") if m in score.values)
        t.emit(ev.Checkpointed(t.step, str(path), "best " + ", ".join(
            describe(score, metric) for metric in shown)))
        return True

    def best_status(self) -> dict | None:
        """The best score so far, for ``gantui ctl status`` (None before one)."""
        best = self.tracker.best
        return None if best is None else {"step": best.step, "metric": best.primary,
                                          "value": best.values.get(best.primary)}
