"""The training loop. Flat, step-based, and silent but for ``emit(event)``.

One iteration, top to bottom: apply pending commands -> wait while paused -> D step(s) ->
G step -> log -> sample -> checkpoint. Statistics accumulate on the device and are read once
per log interval, so a CUDA run never syncs with the host between logs.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from gantui import events as ev
from gantui.config import LIVE_KEYS, Config
from gantui.engine import distributed, fast
from gantui.engine.control import Command, Controller
from gantui.engine.data import Batches, RingBatches, make_batches, ring_modes
from gantui.engine.distributed import SINGLE, Channel, World
from gantui.engine.losses import d_loss, d_prob, g_loss
from gantui.engine.models import build_encoder
from gantui.engine.usermodel import built_digest
from gantui.errors import GantuiError
from gantui.quality.evaluate import Evaluator, Score
from gantui.quality.metrics import HealthMonitor, diversity, ring_coverage
from gantui.quality.tracker import QualityTracker, describe
from gantui.run.store import CHECKPOINT_VERSION, RunStore, StoreError
from gantui.studies.sampling import grid_image, scatter_image
from gantui.text import safe

PREVIEW_MAX_SIDE = 256
RING_PREVIEW_POINTS = 512
RING_EVAL_POINTS = 2500
# Events that go to events.jsonl; metrics go to metrics.jsonl, quality evaluations to
# quality.jsonl, previews to samples/.
JOURNALED = (ev.RunStarted, ev.Changed, ev.Checkpointed, ev.StateChanged, ev.Alert, ev.Note)
# Slots of the on-device statistics accumulator.
LOSS_D, D_REAL, D_FAKE, GRAD_D, LOSS_G, D_FAKE_G, GRAD_G = range(7)
SYNC_EVERY = 4
"""On several ranks, steps between two command exchanges (and stop checks): a command lands
on every rank at the same step, at most this many steps after it arrived."""
PAUSED_POLL_S = 0.2
"""While paused on several ranks, rank 0 waits this long for a command between exchanges:
the ranks keep meeting, so no collective ever waits near its timeout."""


class Trainer:
    """Owns the models, optimizers, data stream and run store of one run.

    Build it in the main thread (bad data or config fail fast), then call :meth:`run` in a
    background thread. ``on_nonfinite`` is ``"stop"`` (headless) or ``"pause"`` (dashboard).
    """

    def __init__(self, cfg: Config, *, store: RunStore, emit: ev.Emit, controller: Controller,
                 device: torch.device, preset: str, name: str,
                 resume_state: dict[str, Any] | None = None, on_nonfinite: str = "stop",
                 notes: list[ev.Event] | tuple[ev.Event, ...] = (), world: World = SINGLE,
                 channel: Channel | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.controller = controller
        self.device = device
        self.preset = preset
        self.name = name
        self.on_nonfinite = on_nonfinite
        self._user_emit = emit
        self._notes = list(notes)
        self.world = world
        """This process's rank; rank 0 alone writes the run directory, samples, evaluates."""
        self.channel = channel if world.distributed else None
        self._stop_asked = False  # a stop signal on a rank other than 0, sent at the next sync

        # The data first: on several ranks, a rank without its data must end them all before
        # DDP's first collective.
        error: BaseException | None = None
        try:
            self.batches: Batches = make_batches(cfg, device, world.shard)
        except BaseException as exc:  # noqa: BLE001 - raised by agree() on this rank
            error = exc
        if self.channel is not None:
            self.channel.agree(error)
            low, high = self.channel.spread(self.batches.steps_per_epoch or 0)
            if low != high:
                raise GantuiError(f"the ranks see different data: {low} to {high} batches per "
                                  f"epoch per rank; every node needs the same files (and the "
                                  f"same `gantui prepare` cache, or none)")
        elif error is not None:
            raise error
        # _G_step/_D_step are what the training steps call: the modules, their compiled
        # forwards (compile), in DDP on several ranks; everything else uses the modules.
        models = fast.training_models(cfg, device, world)
        self.G, self.D, self._input = models.G, models.D, models.input
        self._G_step, self._D_step = models.G_step, models.D_step
        self._D_frozen, self._D_eager = models.D_frozen, models.D_eager
        self._check_sync_bn(cfg)
        self.G_ema: torch.nn.Module | None = None
        """An exponential moving average of G's weights (``ema`` > 0): what previews,
        evaluation and sampling show."""
        if cfg.ema:
            self.G_ema = _frozen_copy(self.G)
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.E: torch.nn.Module | None = None
        """The encoder of a cVAE-GAN (``encoder``): E(x) -> (mu, logvar) of a code for G."""
        self.opt_e: torch.optim.Optimizer | None = None
        self._E_step: torch.nn.Module | None = None
        """E as the steps call it: in DDP on several ranks."""
        if cfg.encoder:
            self.E = build_encoder(cfg).to(device)
            self.opt_e = torch.optim.Adam(self.E.parameters(), lr=cfg.lr_g, betas=betas)
            self._E_step = distributed.wrap(self.E, device) if world.distributed else self.E
        self._real: tuple[torch.Tensor, torch.Tensor | None] | None = None
        # each rank its own noise; rank 0's is a single process's
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + 1 + 7919 * world.rank)
        self.fixed_noise, self.fixed_labels, self.grid_nrow = self._fixed_inputs()
        self.fixed_real = self._fixed_real() if cfg.encoder else None
        """One real digit per class: the preview shows it beside its reconstruction."""
        self.amp = cfg.amp and device.type == "cuda"

        self.step = 0
        self.total_steps = self._total_steps()
        self.health = HealthMonitor(data_fix=getattr(self.batches, "data_fix", ""))
        self.quality = QualityTracker()
        self._evaluator: Evaluator | None = None
        self._eval_broken = False
        self._excluded = 0.0  # seconds in this log interval spent evaluating, not training
        self._waited = 0.0  # seconds in this log interval spent waiting for batches
        self.paused = False
        self.stopping = False
        self._mid_step = False
        self.state = "starting"
        self.last_good_checkpoint: Path | None = None
        self._stop_replies: list[Command] = []
        self._acc = torch.zeros(7, device=device)
        self._n_d = self._n_g = 0
        self._images = 0
        self._skipped_reported = 0
        self._t_log = time.perf_counter()
        self._paused_for = 0.0
        self.resumed = resume_state is not None
        if resume_state is not None:
            try:
                self._restore(resume_state)
            except (KeyError, TypeError, ValueError, RuntimeError, IndexError, OverflowError,
                    AttributeError) as exc:  # a hand-made checkpoint that passed every check
                raise StoreError(f"the checkpoint cannot be resumed: {type(exc).__name__} "
                                 f"({safe(exc, 120)})") from None
            if self.step >= self.total_steps:
                raise GantuiError(f"{store.path} already finished {self.step} of "
                                  f"{self.total_steps} steps; train longer with --set steps=N")

    # ---- setup -------------------------------------------------------------------------

    def _check_sync_bn(self, cfg: Config) -> None:
        """SyncBatchNorm has no double backward: R1 through a D that holds one would crash
        every rank at its first R1 step."""
        synced = any(isinstance(m, torch.nn.SyncBatchNorm) for m in self.D.modules())
        if synced and cfg.r1_gamma > 0:
            raise GantuiError("r1_gamma > 0 cannot go with sync_bn: SyncBatchNorm has no "
                              "second derivative; use sync_bn=false or spectral_norm=true "
                              "(no batch norm in D)")

    def _total_steps(self) -> int:
        if self.cfg.epochs > 0:
            if self.batches.steps_per_epoch is None:
                raise GantuiError(f"dataset {self.cfg.dataset} has no epochs; set steps instead")
            return self.cfg.epochs * self.batches.steps_per_epoch
        return self.cfg.steps

    def _fixed_inputs(self) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """The noise (and labels) behind every preview: a row per class when conditional."""
        cfg = self.cfg
        gen = torch.Generator().manual_seed(cfg.seed + 2)
        if cfg.conditional:
            cols = max(1, cfg.n_samples // cfg.n_classes)
            labels = torch.arange(cfg.n_classes).repeat_interleave(cols)
            z = torch.randn(len(labels), cfg.nz, generator=gen)
            return z.to(self.device), labels.to(self.device), cols
        z = torch.randn(cfg.n_samples, cfg.nz, generator=gen)
        return z.to(self.device), None, max(1, round(math.sqrt(cfg.n_samples)))

    def _fixed_real(self) -> torch.Tensor:
        """The first training digit of each class, as the model sees it ([-1, 1])."""
        images, labels = self.batches.images, self.batches.labels
        first = [int((labels == k).nonzero()[0]) for k in range(self.cfg.n_classes)]
        return images[first].float().div(127.5).sub(1.0)

    def add_note(self, event: ev.Event) -> None:
        """Queue a lifecycle event to be journaled when the run starts."""
        self._notes.append(event)

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> str:
        """Train until done or stopped; returns the final state."""
        cfg = self.cfg
        self._emit(ev.RunStarted(str(self.store.path), self.name, self.preset, str(self.device),
                                 self.step, self.total_steps, cfg.to_dict(), self.batches.note,
                                 self.resumed))
        self._emit(ev.Note(self.step, self.batches.note))
        for note in self._notes:
            self._emit(note)
        self._set_state("running")
        self._t_log = time.perf_counter()
        try:
            while self.step < self.total_steps and not self.stopping:
                self._apply_commands()
                if self.paused:
                    self._wait_while_paused()
                    continue

                if self.cfg.lr_decay != "none":
                    self._apply_optimizer_settings()
                self._mid_step = True  # from here to step += 1 the weights are half-updated
                # ---- Update D: maximise log D(x) + log(1 - D(G(z))) ----
                for _ in range(self.cfg.d_steps):
                    self.d_step()
                # ---- Update G: fool D ----
                self.g_step()
                self.step += 1
                self._mid_step = False

                if self.step % self.cfg.log_every == 0 and not self.log():
                    if self.on_nonfinite == "stop":
                        return self._end("error", "training diverged (non-finite loss)")
                    continue
                if self.step % self.cfg.sample_every == 0:
                    self.sample()
                if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                    self.evaluate()
                if self.step % self.cfg.checkpoint_every == 0:
                    self._periodic_checkpoint()
            self._apply_commands(force=True)
            finite = self.log() if self._n_g else True  # the last steps of a partial interval
            if not finite and self.paused:  # as in the loop: the dashboard user decides
                self._wait_while_paused()
            if finite and self._final_evaluation_due():
                self.evaluate()
            if self.stopping:
                return self._end("stopped", f"stopped at step {self.step}")
            if not finite:
                return self._end("error", "training diverged (non-finite loss)")
            return self._end("finished", f"finished {self.total_steps} steps")
        except Exception as exc:
            error, why = exc, f"{type(exc).__name__}: {exc}"
            lost = self.channel is not None and distributed.is_peer_failure(exc)
            if lost:
                first = safe(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 140)
                why = (f"another rank stopped answering, or the link to it failed (a worker "
                       f"crashed, was killed or timed out); this rank ends too ({first})")
            # Each step of the wind-down on its own: a full disk must not keep the others
            # (answering waiting clients, the final state) from happening.
            for wind_down in (
                lambda: self._emit(ev.Alert(self.step, "error", f"training crashed: {why}")),
                self._crash_checkpoint,
                lambda: self._fail_replies(error),
                lambda: self._set_state("error", why),
            ):
                with contextlib.suppress(Exception):
                    wind_down()
            if lost:
                raise distributed.RankFailed(why) from None
            raise
        finally:
            close = getattr(self.batches, "close", None)  # decoding workers, reader threads
            if close is not None:
                with contextlib.suppress(Exception):
                    close()
            self.store.close()

    def _autocast(self):
        if self.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        z = torch.randn(n, self.cfg.nz, device=self.device, generator=self.noise)
        y = None
        if self.cfg.conditional:
            y = torch.randint(0, self.cfg.n_classes, (n,), device=self.device,
                              generator=self.noise)
        return z, y

    def d_step(self) -> None:
        """One discriminator update on a real batch and a detached fake batch."""
        waiting = time.perf_counter()
        x, y = self.batches.next()
        self._waited += time.perf_counter() - waiting
        n = x.shape[0]
        z, y_fake = self._noise(n)
        r1 = self.cfg.r1_gamma > 0 and self.step % self.cfg.r1_every == 0
        with self._autocast():
            with torch.no_grad():
                fake = self._instance_noise(self._G_step(z, y_fake))
            x = self._instance_noise(self._input(x))
            D = self._D_step
            if r1:
                x = x.detach().requires_grad_(True)
                D = self._D_eager  # R1 differentiates twice: compiled graphs do not
            out_real = D(x, y)
            out_fake = D(fake, y_fake)
            loss = d_loss(self.cfg.loss, out_real.float(), out_fake.float(),
                          self.cfg.label_smoothing)
            if self.E is not None:  # cVAE-GAN: reconstructions are fakes too
                self._real = (x.detach(), y)
                with torch.no_grad():
                    rebuilt = self._G_step(self._code(x.detach())[0], y)
                loss = 0.5 * (loss + d_loss(self.cfg.loss, out_real.float(),
                                            D(rebuilt, y).float(), self.cfg.label_smoothing))
            total = loss + self._r1_penalty(out_real, x) if r1 else loss
        self.opt_d.zero_grad(set_to_none=True)
        total.backward()
        grad = torch.nn.utils.get_total_norm([p.grad for p in self.D.parameters()
                                              if p.grad is not None])
        self.opt_d.step()
        self._acc[LOSS_D:GRAD_D + 1] += torch.stack([  # slices: no index tensor to upload
            loss.detach().float(), d_prob(self.cfg.loss, out_real),
            d_prob(self.cfg.loss, out_fake), grad.float()])
        self._n_d += 1
        self._images += n

    def g_step(self) -> None:
        """One generator update through a frozen discriminator."""
        z, y = self._noise(self.cfg.batch_size)
        self.D.requires_grad_(False)
        try:
            with self._autocast():
                out = self._D_frozen(self._instance_noise(self._G_step(z, y)), y)
                loss = g_loss(self.cfg.loss, out.float())
                total = loss + self._encoder_loss() if self.E is not None else loss
            self.opt_g.zero_grad(set_to_none=True)
            if self.opt_e is not None:
                self.opt_e.zero_grad(set_to_none=True)
            total.backward()
        finally:
            self.D.requires_grad_(True)
        grad = torch.nn.utils.get_total_norm([p.grad for p in self.G.parameters()
                                              if p.grad is not None])
        self.opt_g.step()
        if self.opt_e is not None:
            self.opt_e.step()
        if self.G_ema is not None:
            self._update_ema()
        self._acc[LOSS_G:GRAD_G + 1] += torch.stack([
            loss.detach().float(), d_prob(self.cfg.loss, out), grad.float()])
        self._n_g += 1

    def _code(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(code, mu, logvar)``: E(x) and its reparameterised code mu + sigma * eps."""
        assert self._E_step is not None
        mu, logvar = self._E_step(x)
        eps = torch.randn(mu.shape, device=mu.device, generator=self.noise, dtype=mu.dtype)
        return mu + eps * (0.5 * logvar).exp(), mu, logvar

    def _encoder_loss(self) -> torch.Tensor:
        """BicycleGAN's cVAE-GAN terms for E and G on the D step's real batch: fool D with
        the reconstruction, L1 to the input, KL of the code to N(0, I)."""
        assert self.E is not None and self._real is not None
        x, y = self._real
        code, mu, logvar = self._code(x)
        rebuilt = self._G_step(code, y)
        adversarial = g_loss(self.cfg.loss, self._D_frozen(rebuilt, y).float())
        l1 = (rebuilt.float() - x.float()).abs().mean()
        kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).float().sum(1).mean()
        return adversarial + self.cfg.recon_weight * l1 + self.cfg.kl_weight * kl

    def _instance_noise(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` plus N(0, sigma^2) noise, sigma annealed from ``instance_noise`` to 0."""
        if not self.cfg.instance_noise:
            return x
        sigma = self.cfg.instance_noise * max(0.0, 1.0 - self.step / self.total_steps)
        if sigma == 0:
            return x
        noise = torch.randn(x.shape, device=x.device, generator=self.noise, dtype=x.dtype)
        return x + sigma * noise

    def _r1_penalty(self, out_real: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """R1: gamma/2 E|grad_x D(x)|^2 on real data, times ``r1_every`` when applied lazily."""
        (grad,) = torch.autograd.grad(out_real.float().sum(), x, create_graph=True)
        penalty = grad.float().pow(2).flatten(1).sum(1).mean()
        return penalty * (0.5 * self.cfg.r1_gamma * self.cfg.r1_every)

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = self.cfg.ema
        assert self.G_ema is not None
        ema_params = list(self.G_ema.parameters())
        torch._foreach_lerp_(ema_params, list(self.G.parameters()), 1.0 - decay)
        for ema_buf, buf in zip(self.G_ema.buffers(), self.G.buffers(), strict=True):
            ema_buf.copy_(buf)  # batch-norm statistics follow G's

    # ---- evaluate ----------------------------------------------------------------------

    def _final_evaluation_due(self) -> bool:
        """At the end of a finished run (not a stop: a stop must be quick, and a resumed run
        must evaluate at the same steps as a straight one), unless the last step was just
        evaluated."""
        every = self.cfg.eval_every
        latest = self.quality.latest
        return (self.world.main and bool(every) and not self._eval_broken and not self.stopping
                and self.step >= every and (latest is None or latest.step != self.step))

    def evaluate(self) -> Score | None:
        """Score G (the EMA G when on) between steps; record, emit, keep the best model.

        An evaluation that fails (missing data for its reference, say) is reported once and
        switches evaluation off for this run: a metric never ends a training run.
        """
        if self._eval_broken or not self.world.main:
            return None
        started = time.perf_counter()
        try:
            if self._evaluator is None:
                cfg = self.cfg
                self._evaluator = Evaluator(cfg, self.device, n=cfg.eval_samples or None,
                                            fid_weights=cfg.fid_weights,
                                            log=lambda m: self._emit(ev.Note(self.step, m)))
            score = self._evaluator.evaluate(self.G_eval, self.step, encoder=self.E)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self._eval_broken = True
            self._emit(ev.Alert(self.step, "error", f"quality evaluation failed "
                                f"({type(exc).__name__}: {safe(exc, 200)}); it is off for "
                                f"the rest of this run"))
            return None
        finally:
            self.G.train()
            if self.E is not None:
                self.E.train()
            self._excluded += time.perf_counter() - started
        improved, warnings = self.quality.update(score)
        if improved and not self._save_best(score):
            self.quality.revert_best()  # the best claimed must be the one on disk
        best = self.quality.best or score
        self._emit(ev.Quality(self.step, dict(score.values), score.primary, best.step,
                              best.values.get(score.primary, math.nan), score.seconds))
        for kind, message in warnings:
            self._emit(ev.Alert(self.step, kind, message))
        return score

    def _save_best(self, score: Score) -> bool:
        """Write ``best.pt`` for ``score``; False when it could not be written."""
        if not self.params_finite():
            return False
        state = self.state_dict()
        state["best"] = {"step": score.step, "metric": score.primary,
                         "value": score.values.get(score.primary), "values": dict(score.values)}
        started = time.perf_counter()
        try:
            path = self.store.save_best(state)
        except OSError as exc:
            self._emit(ev.Alert(self.step, "error", f"writing the best checkpoint failed "
                                f"({exc.strerror or exc}); training continues"))
            return False
        finally:
            self._excluded += time.perf_counter() - started
        shown = dict.fromkeys(m for m in (score.primary, "hq", "judge_fd") if m in score.values)
        self._emit(ev.Checkpointed(self.step, str(path), "best " + ", ".join(
            describe(score, metric) for metric in shown)))
        return True

    # ---- log / sample / checkpoint -----------------------------------------------------

    def log(self) -> bool:
        """Read the accumulated statistics (one host sync), record and emit them.

        Returns:
            False when a loss went non-finite (the run is then stopped or paused).
        """
        images, skipped = self._images, self.batches.skipped
        if self.channel is not None:  # every rank's statistics: averaged, images summed
            packed = torch.cat([self._acc, torch.tensor([images, skipped], dtype=torch.float32,
                                                        device=self._acc.device)])
            torch.distributed.all_reduce(packed)
            values = packed.tolist()
            skipped = round(values.pop())
            images = round(values.pop())
            values = [v / self.world.size for v in values]
        else:
            values = self._acc.tolist()
        now = time.perf_counter()
        elapsed = max(now - self._t_log - self._paused_for - self._excluded, 1e-9)
        steps = self._n_g
        n_d, n_g = max(self._n_d, 1), max(self._n_g, 1)
        for slot in (LOSS_D, D_REAL, D_FAKE, GRAD_D):
            values[slot] /= n_d
        for slot in (LOSS_G, D_FAKE_G, GRAD_G):
            values[slot] /= n_g
        metrics = ev.Metrics(
            step=self.step, epoch=self.batches.epoch(),
            loss_d=values[LOSS_D], loss_g=values[LOSS_G], d_real=values[D_REAL],
            d_fake=values[D_FAKE], d_fake_g=values[D_FAKE_G], grad_g=values[GRAD_G],
            grad_d=values[GRAD_D], lr_g=self.cfg.lr_g, lr_d=self.cfg.lr_d,  # as set, unscaled
            img_per_s=images / elapsed,  # on several ranks, the global figure
            eta_s=(self.total_steps - self.step) * elapsed / max(steps, 1), time=time.time(),
            data_wait=min(1.0, self._waited / elapsed))
        self._acc.zero_()
        self._n_d = self._n_g = self._images = 0
        self._t_log = now
        self._paused_for = self._excluded = self._waited = 0.0
        self._emit(metrics)
        if skipped:
            self._emit_once_per_count("data", skipped)
        if not all(math.isfinite(v) for v in values):
            self._nonfinite()
            return False
        for kind, message in self.health.on_metrics(metrics.d_real, metrics.d_fake,
                                                    metrics.grad_g, metrics.grad_d,
                                                    data_wait=metrics.data_wait):
            self._emit(ev.Alert(self.step, kind, message))
        return True

    def _emit_once_per_count(self, kind: str, count: int) -> None:
        if count != self._skipped_reported:
            self._skipped_reported = count
            self._emit(ev.Alert(self.step, kind, f"{count} unreadable image file(s) skipped "
                                "so far"))

    def _nonfinite(self) -> None:
        kept = self.last_good_checkpoint or "none yet"
        message = (f"loss became non-finite (NaN/inf) at step {self.step}: training diverged. "
                   f"The last good checkpoint is kept ({kept}); resume from it with a lower "
                   f"learning rate")
        self._emit(ev.Alert(self.step, "nonfinite", message))
        if self.on_nonfinite == "pause":
            self.paused = True
            self._set_state("paused", "non-finite loss")

    @property
    def G_eval(self) -> torch.nn.Module:
        """The generator to show and score: the EMA one when ``ema`` is on."""
        return self.G_ema if self.G_ema is not None else self.G

    @torch.no_grad()
    def sample(self) -> None:
        """Run G in eval mode on the fixed noise; save the grid and emit a preview (rank 0)."""
        if not self.world.main:
            return
        self.G_eval.eval()
        try:
            if isinstance(self.batches, RingBatches):
                self._sample_points()
                return
            images = self.G_eval(self.fixed_noise, self.fixed_labels).float()
            if self.E is not None and self.fixed_real is not None:
                images = self._with_reconstructions(images)
        finally:
            self.G.train()
            if self.E is not None:
                self.E.train()
        grid = grid_image(images, self.grid_nrow)
        self.store.save_grid(self.step, grid)
        preview = _downsample(grid, PREVIEW_MAX_SIDE)
        c, h, w = preview.shape
        pixels = preview.mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        score = diversity(images)
        self._emit(ev.Preview(self.step, pixels.cpu().numpy().tobytes(), h, w, c,
                              self.grid_nrow, score))
        for kind, message in self.health.on_samples(score):
            self._emit(ev.Alert(self.step, kind, message))

    def _with_reconstructions(self, images: torch.Tensor) -> torch.Tensor:
        """The first two columns of each class row become a real digit of that class and
        G(mu(E(digit)), class): inputs beside reconstructions, the rest free samples."""
        assert self.E is not None and self.fixed_real is not None
        self.E.eval()
        labels = torch.arange(self.cfg.n_classes, device=self.device)
        rebuilt = self.G_eval(self.E(self.fixed_real)[0], labels).float()
        out = images.clone()
        cols = self.grid_nrow
        if cols >= 2:
            out[0::cols] = self.fixed_real
            out[1::cols] = rebuilt
        return out

    def _sample_points(self) -> None:
        gen = torch.Generator().manual_seed(self.cfg.seed + 3)
        z = torch.randn(RING_EVAL_POINTS, self.cfg.nz, generator=gen).to(self.device)
        points = self.G_eval(z).float().cpu()
        covered, quality = ring_coverage(points)
        shown = tuple((round(x, 4), round(y, 4)) for x, y in points[:RING_PREVIEW_POINTS].tolist())
        modes = tuple(tuple(m) for m in ring_modes().tolist())
        self.store.save_grid(self.step, scatter_image(points))
        self._emit(ev.Points(self.step, shown, modes, covered, quality))
        for kind, message in self.health.on_samples(diversity(points[:256])):
            self._emit(ev.Alert(self.step, kind, message))

    def status(self) -> dict[str, Any]:
        """A plain snapshot for ``gantui ctl`` and ``gantui runs`` (safe from any thread)."""
        cfg = self.cfg
        return {"step": self.step, "total_steps": self.total_steps, "state": self.state,
                "name": self.name, "preset": self.preset, "device": str(self.device),
                "pid": os.getpid(), "live": {key: getattr(cfg, key) for key in LIVE_KEYS},
                "world_size": self.world.size,
                "best": None if self.quality.best is None else {
                    "step": self.quality.best.step, "metric": self.quality.best.primary,
                    "value": self.quality.best.values.get(self.quality.best.primary)}}

    def _crash_checkpoint(self) -> None:
        """After a crash between steps (logging, sampling), keep the completed step. A crash
        inside a step leaves D updated and G not: that state is not a resume point, so the
        last checkpoint stays the newest."""
        if self._mid_step or _checkpoint_step_of(self.last_good_checkpoint) == self.step:
            return
        if self.channel is not None:  # it would need every rank, and one may be gone
            return
        self.checkpoint("crash")

    def _periodic_checkpoint(self) -> None:
        """A scheduled checkpoint; failing to write one (a full disk) is a warning, not the end
        of the run, and the previous checkpoints stay."""
        try:
            self.checkpoint("periodic")
        except OSError as exc:
            self._set_state("running", journal=False)
            kept = ("the earlier checkpoints are kept" if self.last_good_checkpoint
                    else "there is no checkpoint yet")
            self._emit(ev.Alert(self.step, "error", f"checkpoint at step {self.step} failed "
                                f"({exc.strerror or exc}); training continues and {kept}"))

    def params_finite(self) -> bool:
        """True when every weight of G and D is finite (one host sync)."""
        models = (self.G, self.D) if self.E is None else (self.G, self.D, self.E)
        flags = [p.isfinite().all() for m in models for p in m.parameters()]
        return bool(torch.stack(flags).all())

    def checkpoint(self, reason: str) -> Path | None:
        """Write a checkpoint atomically, unless the weights went bad (then keep the last)."""
        if not self.params_finite():
            self._emit(ev.Alert(self.step, "nonfinite", "checkpoint skipped: the weights are "
                                f"not finite; the last good checkpoint is kept "
                                f"({self.last_good_checkpoint or 'none yet'})"))
            return None
        previous = self.state
        self._set_state("checkpointing", reason, journal=False)
        if self.channel is None:
            path = self.store.save_checkpoint(self.state_dict(), self.cfg.keep_checkpoints)
        else:
            path = self._checkpoint_all_ranks()
        self.last_good_checkpoint = path
        self._emit(ev.Checkpointed(self.step, str(path), reason))
        self._set_state(previous, journal=False)
        return path

    def _checkpoint_all_ranks(self) -> Path:
        """Every rank's RNG and data position into rank 0's checkpoint (a collective: every
        rank calls it at the same step); every rank learns whether the write worked.

        Raises:
            OSError: on every rank, when rank 0 could not write it.
        """
        assert self.channel is not None
        states = self.channel.gather(self._rank_state())
        outcome: dict[str, Any] | None = None
        if self.world.main:
            state = self.state_dict()
            state["world_size"] = self.world.size
            state["ranks"] = states
            try:
                outcome = {"path": str(self.store.save_checkpoint(state,
                                                                  self.cfg.keep_checkpoints))}
            except OSError as exc:
                outcome = {"errno": exc.errno or 0, "error": exc.strerror or str(exc)}
        outcome = self.channel.broadcast(outcome)
        if "error" in outcome:
            raise OSError(outcome["errno"], outcome["error"])
        return Path(outcome["path"])

    def _rank_state(self) -> dict[str, Any]:
        """What differs between ranks: RNG streams and the data position."""
        return {"rng": self._rng_state(), "data": self.batches.state_dict()}

    def _rng_state(self) -> dict[str, Any]:
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else []
        return {"torch": torch.get_rng_state(), "cuda": cuda_rng, "noise": self.noise.get_state()}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: one dict of tensors and plain values."""
        return {
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "config": self.cfg.to_dict(),
            "preset": self.preset,
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "rng": self._rng_state(),
            "world_size": self.world.size,
            "data": self.batches.state_dict(),
            "fixed_noise": self.fixed_noise.cpu(),
            "fixed_labels": None if self.fixed_labels is None else self.fixed_labels.cpu(),
            "G_ema": None if self.G_ema is None else self.G_ema.state_dict(),
            "E": None if self.E is None else self.E.state_dict(),
            "opt_e": None if self.opt_e is None else self.opt_e.state_dict(),
            "fixed_real": None if self.fixed_real is None else self.fixed_real.cpu(),
            "quality": self.quality.state_dict(),
            "model_source": built_digest(self.cfg),  # sha256 of a user's model file, or ""
        }

    def _restore(self, state: dict[str, Any]) -> None:
        """Mirror of :meth:`state_dict`; the config was already rebuilt from ``state``."""
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        if self.E is not None and self.opt_e is not None:
            self.E.load_state_dict(state["E"])
            self.opt_e.load_state_dict(state["opt_e"])
            self.fixed_real = state["fixed_real"].to(self.device)
        self._apply_optimizer_settings()
        self.step = int(state["step"])
        mine = self._restore_rank(state)
        torch.set_rng_state(mine["rng"]["torch"])
        if self.device.type == "cuda" and mine["rng"]["cuda"]:
            torch.cuda.set_rng_state_all(mine["rng"]["cuda"])
        if mine["rng"].get("noise") is not None:
            self.noise.set_state(mine["rng"]["noise"])
        self.batches.load_state_dict(mine["data"])
        self.fixed_noise = state["fixed_noise"].to(self.device)
        labels = state.get("fixed_labels")
        self.fixed_labels = None if labels is None else labels.to(self.device)
        if self.G_ema is not None:  # absent (ema switched on at this resume): start from G
            ema = state.get("G_ema")
            self.G_ema.load_state_dict(ema if isinstance(ema, dict) else self.G.state_dict())
        quality = state.get("quality")
        if isinstance(quality, dict):
            self.quality.load_state_dict(quality)

    def _restore_rank(self, state: dict[str, Any]) -> dict[str, Any]:
        """This rank's RNG streams and data position from ``state``: its own when the
        checkpoint was written by as many ranks, else rank 0's data position with fresh
        per-rank noise (continuing, but no longer exactly; a note says so)."""
        saved = int(state.get("world_size", 1))
        ranks = state.get("ranks")
        if saved == self.world.size:
            if saved == 1:
                return {"rng": state["rng"], "data": state["data"]}
            if isinstance(ranks, list) and len(ranks) == saved:
                return ranks[self.world.rank]
        if self.cfg.epochs > 0:
            raise GantuiError(f"this run counts epochs, and an epoch is a different number of "
                              f"steps on {self.world.size} rank(s) than on {saved}: resume on "
                              f"{saved}, or give its length in steps (--set steps=N)")
        if self.world.main:
            self.add_note(ev.Alert(int(state["step"]), "control", f"resuming {saved} rank(s)' "
                                   f"checkpoint on {self.world.size}: training continues, but "
                                   f"no longer exactly as it would have on {saved}"))
        data = dict(state["data"])
        if isinstance(self.batches, RingBatches) or "index" not in data:
            data = self.batches.state_dict()  # a fresh stream for this rank
        elif self.batches.steps_per_epoch and int(data["index"]) >= self.batches.steps_per_epoch:
            data.update(epoch=int(data["epoch"]) + 1, index=0)  # shorter epochs per rank now
        seed = self.cfg.seed + 1 + 7919 * self.world.rank + 104_729 * int(state["step"])
        noise = torch.Generator(device=self.device).manual_seed(seed).get_state()
        return {"rng": dict(state["rng"], noise=noise), "data": data}

    # ---- control -----------------------------------------------------------------------

    def _apply_commands(self, force: bool = False) -> None:
        if self.channel is not None:
            if force or self.step % SYNC_EVERY == 0:
                self._exchange_commands()
            return
        while (command := self.controller.get()) is not None:
            self._apply(command)

    def _wait_while_paused(self) -> None:
        started = time.perf_counter()
        while self.paused and not self.stopping:
            if self.channel is not None:  # rank 0 waits for a command; the others for it
                first = self.controller.get(timeout=PAUSED_POLL_S) if self.world.main else None
                self._exchange_commands(first)
                continue
            command = self.controller.get(timeout=0.1)
            if command is not None:
                self._apply(command)
        self._paused_for += time.perf_counter() - started

    def _exchange_commands(self, first: Command | None = None) -> None:
        """Rank 0's commands, applied on every rank at this step in the same order; a stop
        asked on any rank (its SIGTERM) stops them all."""
        assert self.channel is not None
        local = [] if first is None else [first]
        while (command := self.controller.get()) is not None:
            local.append(command)
        if self.world.main:
            payload = distributed.encode([(c.action, c.changes, c.source) for c in local])
        else:  # only a stop is ever asked of another rank (its signal handler)
            payload = b""
            for command in local:
                self._stop_asked = self._stop_asked or command.action == "stop"
                command.reply.set_result({"action": command.action, "step": self.step})
        payload, stop = self.channel.exchange(payload, self._stop_asked)
        if self.world.main:
            commands = local
        else:
            commands = [Command(action, changes, source)
                        for action, changes, source in distributed.decode(payload)]
        for command in commands:
            self._apply(command)
        if stop and not self.stopping:
            self._apply(Command("stop", source="a signal on another rank"))

    def _apply(self, command: Command) -> None:
        """Carry out one command and answer its future; refusals are journaled."""
        try:
            ack = self._carry_out(command)
        except GantuiError as exc:
            self._emit(ev.Alert(self.step, "control", f"refused {command.action} from "
                                f"{command.source}: {exc}"))
            command.reply.set_exception(exc)
            return
        except OSError as exc:  # a requested checkpoint on a full disk: the run goes on
            self._set_state("paused" if self.paused else "running", journal=False)
            message = (f"{command.action} from {command.source} failed "
                       f"({exc.strerror or exc}); training continues")
            self._emit(ev.Alert(self.step, "error", message))
            command.reply.set_exception(GantuiError(message))
            return
        if ack is not None:
            command.reply.set_result(ack)

    def _carry_out(self, command: Command) -> dict[str, Any] | None:
        action = command.action
        ack: dict[str, Any] = {"action": action, "step": self.step}
        if action == "pause":
            if not self.paused:
                self.paused = True
                self._set_state("paused", f"paused by {command.source}")
        elif action == "resume":
            if self.paused:
                self.paused = False
                self._set_state("running", f"resumed by {command.source}")
        elif action == "checkpoint":
            path = self.checkpoint(f"requested by {command.source}")
            if path is None:
                raise GantuiError("checkpoint refused: the weights are not finite")
            ack["path"] = str(path)
        elif action == "stop":
            self.stopping = True
            self._stop_replies.append(command)
            return None  # answered once the final checkpoint is written
        elif action == "set":
            ack["changes"] = self._set(command.changes)
        elif action == "journal":
            self._emit(ev.Alert(self.step, str(command.changes["kind"]),
                                str(command.changes["message"])))
        return ack

    def _set(self, changes: dict[str, Any]) -> list[dict[str, Any]]:
        new_cfg = self.cfg.replace(**changes)  # validates ranges together
        self._check_sync_bn(new_cfg)
        applied = []
        for key, value in changes.items():
            old = getattr(self.cfg, key)
            if old == value:
                continue
            applied.append({"key": key, "old": old, "new": value})
        self.cfg = new_cfg
        self._apply_optimizer_settings()
        for change in applied:
            self._emit(ev.Changed(self.step, change["key"], change["old"], change["new"]))
        return applied

    def _apply_optimizer_settings(self) -> None:
        """Push the live lr (times the schedule's factor at this step) and betas of
        :attr:`cfg` into both optimizers."""
        betas = (self.cfg.beta1, self.cfg.beta2)
        scale = lr_factor(self.cfg.lr_decay, self.step, self.total_steps)
        optimizers = [(self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)]
        if self.opt_e is not None:
            optimizers.append((self.opt_e, self.cfg.lr_g))  # E learns with G
        for opt, lr in optimizers:
            for group in opt.param_groups:
                group["lr"] = lr * scale
                group["betas"] = betas

    # ---- lifecycle ---------------------------------------------------------------------

    def _end(self, state: str, message: str) -> str:
        if state in ("finished", "stopped"):
            path = self.last_good_checkpoint
            if _checkpoint_step_of(path) != self.step:
                path = self.checkpoint("final" if state == "finished" else "stop")
            if path is not None:
                message += f"; checkpoint {path}"
        for command in self._stop_replies:
            command.reply.set_result({"action": "stop", "step": self.step,
                                      "path": str(self.last_good_checkpoint or "")})
        self._stop_replies.clear()
        self._fail_pending(state)
        self._set_state(state, message)
        return state

    def _fail_pending(self, state: str) -> None:
        """Answer commands that arrived too late to be applied."""
        while (command := self.controller.get()) is not None:
            command.reply.set_exception(GantuiError(f"run already {state}"))

    def _fail_replies(self, exc: Exception) -> None:
        for command in self._stop_replies:
            command.reply.set_exception(GantuiError(f"run crashed: {exc}"))
        self._stop_replies.clear()
        self._fail_pending("crashed")

    def _set_state(self, state: str, message: str = "", journal: bool = True) -> None:
        self.state = state
        event = ev.StateChanged(self.step, state, message)
        if journal:
            self._emit(event)
        else:
            self._user_emit(event)

    def _emit(self, event: ev.Event) -> None:
        """Record ``event`` in the run directory, then hand it to the consumer (on rank 0;
        the other ranks only hand it over)."""
        if not self.world.main:
            pass
        elif isinstance(event, ev.Metrics):
            self.store.append_metrics(_metrics_record(event))
        elif isinstance(event, ev.Quality):
            self.store.append_quality(_metrics_record(event))
        elif isinstance(event, JOURNALED):
            self.store.append_event(ev.to_record(event))
        self._user_emit(event)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """What the schedule multiplies the learning rates by before step ``step + 1``."""
    if schedule == "none" or total <= 0:
        return 1.0
    progress = min(1.0, step / total)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    copied = copy.deepcopy(module).eval()
    copied.requires_grad_(False)
    return copied


def _checkpoint_step_of(path: Path | None) -> int | None:
    return None if path is None else int(path.stem.split("-")[1])


def _metrics_record(event: ev.Metrics) -> dict[str, Any]:
    record = ev.to_record(event)
    record.pop("event")
    return record


def _downsample(grid: torch.Tensor, max_side: int) -> torch.Tensor:
    """Shrink a (C, H, W) grid so its longer side is at most ``max_side`` (area filter)."""
    _, h, w = grid.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return grid
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(grid[None], size=size, mode="area")[0]
