"""The training loop. Flat, step-based, and silent but for ``emit(event)``.

One iteration, top to bottom: apply pending commands -> wait while paused -> D step(s) ->
G step -> log -> sample -> evaluate -> checkpoint. Statistics accumulate on the device and
are read once per log interval, so a CUDA run never syncs with the host between logs.

The jobs around the loop live in rooms of their own, each given the trainer:
:mod:`~gantui.engine.commands` (steering), :mod:`~gantui.engine.previews` (the sample grid),
:mod:`~gantui.engine.evaluation` (quality and ``best.pt``) and
:mod:`~gantui.engine.checkpoint` (what a checkpoint holds, writing it, a full disk). One rank
or many run the same code: a single process talks to itself through
:class:`~gantui.engine.distributed.LocalChannel`.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from gantui import events as ev
from gantui.config import LIVE_KEYS, Config, ConfigError
from gantui.data.batches import make_batches
from gantui.data.sources import Batches
from gantui.engine import checkpoint as ckpt
from gantui.engine import distributed, ema, fast
from gantui.engine.augment import AugmentChance, perturb
from gantui.engine.commands import Commands
from gantui.engine.control import Controller
from gantui.engine.distributed import SINGLE, Channel, LocalChannel, World
from gantui.engine.evaluation import Evaluation
from gantui.engine.losses import d_loss, d_prob, g_loss, r1_due, r1_penalty
from gantui.engine.previews import Previews
from gantui.errors import GantuiError
from gantui.models.builtin import build_code_reader, build_encoder
from gantui.models.latent import code, training_noise
from gantui.quality.diagnostics import real_threshold
from gantui.quality.metrics import HealthMonitor
from gantui.quality.tracker import QualityTracker
from gantui.run.store import RunStore, StoreError
from gantui.text import safe

# Events that go to events.jsonl; metrics go to metrics.jsonl, quality evaluations to
# quality.jsonl, previews to samples/.
JOURNALED = (ev.RunStarted, ev.Changed, ev.Checkpointed, ev.StateChanged, ev.Alert, ev.Note)
# Slots of the on-device statistics accumulator.
LOSS_D, D_REAL, D_FAKE, GRAD_D, LOSS_G, D_FAKE_G, GRAD_G, INFO_ACC = range(8)


class Trainer:
    """Owns the models, optimizers, data stream and run store of one run.

    Build it in the main thread (bad data or config fail fast), then call :meth:`run` in a
    background thread. ``on_nonfinite`` is ``"stop"`` (headless) or ``"pause"`` (dashboard).
    """

    def __init__(self, cfg: Config, *, store: RunStore, emit: ev.Emit, controller: Controller,
                 device: torch.device, preset: str, name: str,
                 resume_state: dict[str, Any] | None = None, on_nonfinite: str = "stop",
                 notes: list[ev.Event] | tuple[ev.Event, ...] = (), world: World = SINGLE,
                 channel: Channel | None = None, threads: int = 0) -> None:
        self.cfg = cfg
        self.threads = threads
        """Intra-op threads :meth:`run` sets in the thread it runs in (0: as they are); see
        :func:`gantui.engine.fast.hand_over_threads`."""
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
        self.channel: Channel | LocalChannel = channel if world.distributed else LocalChannel()
        """How the ranks meet between steps; a single process meets itself."""

        # The data first: on several ranks, a rank without its data must end them all before
        # DDP's first collective.
        error: BaseException | None = None
        try:
            self.batches: Batches = make_batches(cfg, device, world.shard)
        except BaseException as exc:  # noqa: BLE001 - raised by agree() on this rank
            error = exc
        self.channel.agree(error)
        low, high = self.channel.spread(self.batches.steps_per_epoch or 0)
        if low != high:
            raise GantuiError(f"the ranks see different data: {low} to {high} batches per "
                              f"epoch per rank; every node needs the same files (and the same "
                              f"`gantui prepare` cache, or none)")
        # _G_step/_D_step are what the training steps call: the modules, their compiled
        # forwards (compile), in DDP on several ranks; everything else uses the modules.
        models = fast.training_models(cfg, device, world, self.channel.agree)
        self.G, self.D, self._input = models.G, models.D, models.input
        self._G_step, self._D_step = models.G_step, models.D_step
        self._D_frozen, self._D_eager = models.D_frozen, models.D_eager
        self._check_sync_bn(cfg)
        self.G_ema: torch.nn.Module | None = None
        """An exponential moving average of G's weights (``ema`` > 0): what previews,
        evaluation and sampling show."""
        if cfg.ema:
            self.G_ema = ema.frozen_copy(self.G)
        self._ema_calibrated = -1
        """The step G_ema's batch-norm statistics were last computed for (see G_eval)."""
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
        self.Q: torch.nn.Module | None = None
        """InfoGAN's Q (``info_codes``): a sample -> logits of the categorical code in its z;
        or AC-GAN's classifier (``ac_weight``): an image -> logits of its class."""
        self.opt_q: torch.optim.Optimizer | None = None
        self._Q_step: torch.nn.Module | None = None
        self._classifier = bool(cfg.ac_weight > 0)
        """Q is AC-GAN's classifier: it learns in the D step, from real labelled images."""
        if cfg.reader_classes:
            self.Q = build_code_reader(cfg).to(device)
            if world.distributed and cfg.sync_bn and device.type == "cuda":  # as G and D
                self.Q = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.Q)
            self.opt_q = torch.optim.Adam(self.Q.parameters(), lr=cfg.lr_d, betas=betas)
            self._Q_step = distributed.wrap(self.Q, device) if world.distributed else self.Q
        self._real: tuple[torch.Tensor, torch.Tensor | None] | None = None
        # each rank its own noise; rank 0's is a single process's
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + 1 + 7919 * world.rank)
        self.amp = fast.uses_amp(cfg, device)
        self.augment = AugmentChance(real_threshold(cfg.loss), device, self.channel.total)
        """The chance DiffAugment's augmentations are applied with (``ada_target``)."""

        self.step = 0
        self.total_steps = total_steps(cfg, self.batches)
        self.health = HealthMonitor(data_fix=getattr(self.batches, "data_fix", ""))
        self._excluded = 0.0  # seconds in this log interval spent evaluating, not training
        self._waited = 0.0  # seconds in this log interval spent waiting for batches
        self.paused = False
        self.stopping = False
        self.mid_step = False
        """True from the D step to the end of the G step: the weights are half-updated."""
        self.state = "starting"
        self.last_good_checkpoint: Path | None = None
        self.write_failure: str | None = None
        """Why the run ended early: a checkpoint it could not write (a full disk)."""
        self._unwritable: set[str] = set()  # files and folders already warned about
        self._acc = torch.zeros(8, device=device)
        self._n_d = self._n_g = 0
        self._images = 0
        self._skipped_reported = 0
        self._t_log = time.perf_counter()
        self._paused_for = 0.0
        # the rooms: each job around the loop in a module of its own
        self.previews = Previews(self)
        self.evaluation = Evaluation(self)
        self.checkpoints = ckpt.Checkpoints(self)
        self.commands = Commands(self)
        self.resumed = resume_state is not None
        if resume_state is not None:
            try:
                ckpt.load(self, resume_state)
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

    def add_note(self, event: ev.Event) -> None:
        """Queue a lifecycle event to be journaled when the run starts."""
        self._notes.append(event)

    # ---- the loop ----------------------------------------------------------------------

    def run(self) -> str:
        """Train until done or stopped; returns the final state."""
        cfg = self.cfg
        if self.threads:
            torch.set_num_threads(self.threads)  # OpenMP's count is per thread
        self.emit(ev.RunStarted(str(self.store.path), self.name, self.preset, str(self.device),
                                 self.step, self.total_steps, cfg.to_dict(), self.batches.note,
                                 self.resumed))
        self.emit(ev.Note(self.step, self.batches.note))
        for note in self._notes:
            self.emit(note)
        self.set_state("running")
        self._t_log = time.perf_counter()
        try:
            while self.step < self.total_steps and not self.stopping:
                self.commands.poll()
                if self.paused:
                    self.commands.wait_while_paused()
                    continue

                if self.cfg.lr_decay != "none":
                    self.apply_optimizer_settings()
                self.mid_step = True
                # ---- Update D: maximise log D(x) + log(1 - D(G(z))) ----
                for _ in range(self.cfg.d_steps):
                    self.d_step()
                # ---- Update G: fool D ----
                self.g_step()
                self.step += 1
                self.mid_step = False

                if self.step % self.cfg.log_every == 0 and not self.log():
                    if self.on_nonfinite == "stop":
                        return self._end("error", "training diverged (non-finite loss)")
                    continue
                if self.step % self.cfg.sample_every == 0:
                    self.previews.draw()
                if self.cfg.eval_every and self.step % self.cfg.eval_every == 0:
                    self.evaluation.evaluate()
                if self.step % self.cfg.checkpoint_every == 0:
                    self.checkpoints.periodic()
            self.commands.poll(force=True)
            finite = self.log() if self._n_g else True  # the last steps of a partial interval
            if not finite and self.paused:  # as in the loop: the dashboard user decides
                self.commands.wait_while_paused()
            if finite and self.evaluation.final_due():
                self.evaluation.evaluate()
            if self.stopping:
                return self._end("stopped", f"stopped at step {self.step}")
            if not finite:
                return self._end("error", "training diverged (non-finite loss)")
            return self._end("finished", f"finished {self.total_steps} steps")
        except Exception as exc:
            error, why = exc, f"{type(exc).__name__}: {exc}"
            lost = self.world.distributed and distributed.is_peer_failure(exc)
            if lost:
                first = safe(str(exc).splitlines()[0] if str(exc) else type(exc).__name__, 140)
                why = (f"another rank stopped answering, or the link to it failed (a worker "
                       f"crashed, was killed or timed out); this rank ends too ({first})")
            # Each step of the wind-down on its own: a full disk must not keep the others
            # (answering waiting clients, the final state) from happening.
            for wind_down in (
                lambda: self.emit(ev.Alert(self.step, "error", f"{ev.CRASHED}{why}")),
                self.checkpoints.after_crash,
                lambda: self.commands.fail_all(error),
                lambda: self.set_state("error", why),
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
        return fast.autocast(self.amp, self.device)

    def _noise(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return training_noise(self.cfg, n, self.noise, self.device)

    def d_step(self) -> None:
        """One discriminator update on a real batch and a detached fake batch."""
        waiting = time.perf_counter()
        x, y = self.batches.next()
        self._waited += time.perf_counter() - waiting
        n = x.shape[0]
        z, y_fake = self._noise(n)
        r1 = r1_due(self.cfg.r1_gamma, self.cfg.r1_every, self.step)
        with self._autocast():
            with torch.no_grad():
                fake = self._perturb(self._G_step(z, y_fake))
            x = self._perturb(self._input(x))
            D = self._D_step
            if r1:
                x = x.detach().requires_grad_(True)
                D = self._D_eager  # R1 differentiates twice: compiled graphs do not
            out_real = D(x, y)
            out_fake = D(fake, y_fake)
            self.evaluation.signs.add(out_real)  # ADA's r_t, read at evaluations
            loss = d_loss(self.cfg.loss, out_real.float(), out_fake.float(),
                          self.cfg.label_smoothing)
            if self.E is not None:  # cVAE-GAN: reconstructions are fakes too
                self._real = (x.detach(), y)
                with torch.no_grad():
                    rebuilt = self._G_step(self._code(x.detach())[0], y)
                loss = 0.5 * (loss + d_loss(self.cfg.loss, out_real.float(),
                                            D(rebuilt, y).float(), self.cfg.label_smoothing))
            total = (loss + r1_penalty(out_real, x, self.cfg.r1_gamma, self.cfg.r1_every)
                     if r1 else loss)
            if self._classifier:
                assert self._Q_step is not None and y is not None
                total = total + torch.nn.functional.cross_entropy(
                    self._Q_step(x.detach()).float(), y)
        self.opt_d.zero_grad(set_to_none=True)
        if self._classifier:
            assert self.opt_q is not None
            self.opt_q.zero_grad(set_to_none=True)
        total.backward()
        grad = torch.nn.utils.get_total_norm([p.grad for p in self.D.parameters()
                                              if p.grad is not None])
        self.opt_d.step()
        if self._classifier:
            assert self.opt_q is not None
            self.opt_q.step()
        # the adaptive chance's r_t; after the update is queued, as its host read waits for
        # the forward pass (every ADA_INTERVAL batches)
        self.augment.observe(out_real, self.cfg)
        self._acc[LOSS_D:GRAD_D + 1] += torch.stack([  # slices: no index tensor to upload
            loss.detach().float(), d_prob(self.cfg.loss, out_real),
            d_prob(self.cfg.loss, out_fake), grad.float()])
        self._n_d += 1
        self._images += n

    def g_step(self) -> None:
        """One generator update through a frozen discriminator."""
        z, y = self._noise(self.cfg.batch_size)
        frozen = [self.D] + ([self.Q] if self._classifier and self.Q is not None else [])
        for model in frozen:
            model.requires_grad_(False)
        # InfoGAN's Q learns beside G, from G's samples; AC-GAN's learns in the D step
        learners = [self.opt_e] + ([] if self._classifier else [self.opt_q])
        try:
            with self._autocast():
                fake = self._G_step(z, y)
                out = self._D_frozen(self._perturb(fake), y)
                loss = g_loss(self.cfg.loss, out.float())
                total = loss + self._encoder_loss() if self.E is not None else loss
                if self._classifier:
                    label, read = self._class_loss(fake, y)
                    total = total + self.cfg.ac_weight * label
                elif self.Q is not None:
                    info, read = self._info_loss(fake, z)
                    total = total + self.cfg.info_weight * info
            self.opt_g.zero_grad(set_to_none=True)
            for opt in learners:
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            total.backward()
        finally:
            for model in frozen:
                model.requires_grad_(True)
        grad = torch.nn.utils.get_total_norm([p.grad for p in self.G.parameters()
                                              if p.grad is not None])
        self.opt_g.step()
        for opt in learners:
            if opt is not None:
                opt.step()
        if self.Q is not None:
            self._acc[INFO_ACC] += read
        if self.G_ema is not None:
            ema.update(self.G_ema, self.G, self.cfg.ema)
        self._acc[LOSS_G:GRAD_G + 1] += torch.stack([
            loss.detach().float(), d_prob(self.cfg.loss, out), grad.float()])
        self._n_g += 1

    def _info_loss(self, fake: torch.Tensor, z: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoGAN's L_I for G and Q: the cross-entropy of Q reading G's samples against the
        code in their z (a lower bound on their mutual information, less the code's entropy),
        and the share Q read right."""
        assert self._Q_step is not None
        return _read_back(self._Q_step(fake).float(), code(self.cfg, z))

    def _class_loss(self, fake: torch.Tensor, y: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """AC-GAN's term for G: the cross-entropy of the (frozen) classifier reading G's
        samples against the classes they were asked for, and the share it read right. The
        module itself, not its DDP wrapper: no gradient of Q's is made here to reduce."""
        assert self.Q is not None and y is not None
        return _read_back(self.Q(fake).float(), y)

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

    def _perturb(self, x: torch.Tensor) -> torch.Tensor:
        """What D sees of a real or generated batch (:func:`augment.perturb`: DiffAugment,
        then instance noise); the draws come from :attr:`noise`, saved in checkpoints."""
        return perturb(x, self.cfg, self.step, self.total_steps, self.noise,
                       self.augment.p(self.cfg))

    # ---- log / sample / checkpoint -----------------------------------------------------

    def log(self) -> bool:
        """Read the accumulated statistics (one host sync), record and emit them.

        Returns:
            False when a loss went non-finite (the run is then stopped or paused).
        """
        # every rank's statistics averaged, images and skipped files summed
        values, (images, skipped) = self.channel.average(
            self._acc, [self._images, self.batches.skipped])
        images, skipped = round(images), round(skipped)
        now = time.perf_counter()
        elapsed = max(now - self._t_log - self._paused_for - self._excluded, 1e-9)
        steps = self._n_g
        n_d, n_g = max(self._n_d, 1), max(self._n_g, 1)
        for slot in (LOSS_D, D_REAL, D_FAKE, GRAD_D):
            values[slot] /= n_d
        for slot in (LOSS_G, D_FAKE_G, GRAD_G, INFO_ACC):
            values[slot] /= n_g
        metrics = ev.Metrics(
            step=self.step, epoch=self.batches.epoch(),
            loss_d=values[LOSS_D], loss_g=values[LOSS_G], d_real=values[D_REAL],
            d_fake=values[D_FAKE], d_fake_g=values[D_FAKE_G], grad_g=values[GRAD_G],
            grad_d=values[GRAD_D], lr_g=self.cfg.lr_g, lr_d=self.cfg.lr_d,  # as set, unscaled
            img_per_s=images / elapsed,  # on several ranks, the global figure
            eta_s=(self.total_steps - self.step) * elapsed / max(steps, 1), time=time.time(),
            data_wait=min(1.0, self._waited / elapsed),
            info_acc=values[INFO_ACC] if self.Q is not None else float("nan"),
            aug_p=self._aug_p())
        self._acc.zero_()
        self._n_d = self._n_g = self._images = 0
        self._t_log = now
        self._paused_for = self._excluded = self._waited = 0.0
        self.emit(metrics)
        if skipped:
            self._emit_once_per_count("data", skipped)
        if not all(math.isfinite(v) for v in values[:INFO_ACC]):
            self._nonfinite()
            return False
        for kind, message in self.health.on_metrics(metrics.d_real, metrics.d_fake,
                                                    metrics.grad_g, metrics.grad_d,
                                                    data_wait=metrics.data_wait):
            self.emit(ev.Alert(self.step, kind, message))
        return True

    def _aug_p(self) -> float:
        """The chance of DiffAugment's augmentations, to record where it is not simply all
        of them (``ada_target`` on, or ``diffaug_p`` below 1); else NaN."""
        cfg = self.cfg
        if cfg.diffaug and (cfg.ada_target or cfg.diffaug_p < 1):
            return self.augment.p(cfg)
        return float("nan")

    def _emit_once_per_count(self, kind: str, count: int) -> None:
        if count != self._skipped_reported:
            self._skipped_reported = count
            self.emit(ev.Alert(self.step, kind, f"{count} unreadable image file(s) skipped "
                                "so far"))

    def _nonfinite(self) -> None:
        kept = self.last_good_checkpoint or "none yet"
        message = (f"loss became non-finite (NaN/inf) at step {self.step}: training diverged. "
                   f"The last good checkpoint is kept ({kept}); resume from it with a lower "
                   f"learning rate")
        self.emit(ev.Alert(self.step, "nonfinite", message))
        if self.on_nonfinite == "pause":
            self.paused = True
            self.set_state("paused", "non-finite loss")

    @property
    def G_eval(self) -> torch.nn.Module:
        """The generator to show, score and save as the one to sample: the EMA one when
        ``ema`` is on, with batch-norm statistics of its own (:func:`ema.calibrate`, once a
        step)."""
        if self.G_ema is None:
            return self.G
        if self._ema_calibrated != self.step:
            ema.calibrate(self.G_ema, self.cfg, self.step, self.device)
            self._ema_calibrated = self.step
        return self.G_ema

    def status(self) -> dict[str, Any]:
        """A plain snapshot for ``gantui ctl`` and ``gantui runs`` (safe from any thread)."""
        cfg = self.cfg
        return {"step": self.step, "total_steps": self.total_steps, "state": self.state,
                "name": self.name, "preset": self.preset, "device": str(self.device),
                "pid": os.getpid(), "live": {key: getattr(cfg, key) for key in LIVE_KEYS},
                "world_size": self.world.size,
                "best": self.evaluation.best_status()}

    @property
    def quality(self) -> QualityTracker:
        """The run's quality so far: best and latest score (the evaluation room's)."""
        return self.evaluation.tracker

    def not_training(self, seconds: float) -> None:
        """Leave ``seconds`` spent between steps (evaluating) out of this interval's img/s."""
        self._excluded += seconds

    def paused_for(self, seconds: float) -> None:
        """Leave ``seconds`` spent paused out of this interval's img/s."""
        self._paused_for += seconds

    def writable(self, key: str) -> None:
        """A write to ``key`` (a file or folder) worked: warn again if it fails later."""
        self._unwritable.discard(key)

    def write_warning(self, exc: OSError, key: str, what: str) -> None:
        """A sample or journal record that could not be written: a warning once per file (or
        folder) until it is written again; training goes on."""
        if key in self._unwritable:
            return
        self._unwritable.add(key)  # before emitting: journaling this may fail as well
        self.emit(ev.Alert(self.step, "error", f"{ckpt.write_failure(exc, self.store.path, what)}"
                            f"; training continues without it (said once, until it works "
                            f"again)"))

    def params_finite(self) -> bool:
        """True when every weight of G, D (and E, Q when present) is finite (one host
        sync)."""
        models = [m for m in (self.G, self.D, self.E, self.Q) if m is not None]
        flags = [p.isfinite().all() for m in models for p in m.parameters()]
        return bool(torch.stack(flags).all())

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (see :mod:`gantui.engine.checkpoint`)."""
        return ckpt.save(self)

    def set_live(self, changes: dict[str, Any]) -> list[dict[str, Any]]:
        """Change live hyperparameters (validated together), journal each change."""
        if "info_weight" in changes and not self.cfg.info_codes:
            raise ConfigError("info_weight weighs InfoGAN's code; this run has none "
                              "(info_codes = 0)")
        if "ac_weight" in changes and not self._classifier:
            raise ConfigError("ac_weight weighs AC-GAN's classifier; this run started "
                              "without one (ac_weight = 0)")
        new_cfg = self.cfg.replace(**changes)  # validates ranges together
        if "ac_weight" in changes and not new_cfg.ac_weight > 0:
            raise ConfigError("ac_weight stays above 0 in a run with the classifier (it "
                              "is kept, and resumed, only while it is on): set a small "
                              "weight such as 0.001 to quieten it")
        self._check_sync_bn(new_cfg)
        applied = []
        for key, value in changes.items():
            old = getattr(self.cfg, key)
            if old == value:
                continue
            applied.append({"key": key, "old": old, "new": value})
        self.cfg = new_cfg
        self.apply_optimizer_settings()
        for change in applied:
            self.emit(ev.Changed(self.step, change["key"], change["old"], change["new"]))
        return applied

    def apply_optimizer_settings(self) -> None:
        """Push the live lr (times the schedule's factor at this step) and betas of
        :attr:`cfg` into both optimizers."""
        betas = (self.cfg.beta1, self.cfg.beta2)
        scale = lr_factor(self.cfg.lr_decay, self.step, self.total_steps)
        optimizers = [(self.opt_g, self.cfg.lr_g), (self.opt_d, self.cfg.lr_d)]
        if self.opt_e is not None:
            optimizers.append((self.opt_e, self.cfg.lr_g))  # E learns with G
        if self.opt_q is not None:
            optimizers.append((self.opt_q, self.cfg.lr_d))  # Q reads samples as D does
        apply_rates(optimizers, scale, betas)

    # ---- lifecycle ---------------------------------------------------------------------

    def _end(self, state: str, message: str) -> str:
        if state in ("finished", "stopped"):
            path = self.checkpoints.final(state)
            if self.write_failure is not None:
                cause = self.write_failure.partition(" while writing ")[0]
                state, message = "error", (f"stopped at step {self.step}: {cause} (the "
                                           f"checkpoints on disk are intact)")
            elif path is not None:
                message += f"; checkpoint {path}"
        self.commands.answer_stops(str(self.last_good_checkpoint or ""))
        self.commands.fail_pending(state)
        self.set_state(state, message)
        return state

    def set_state(self, state: str, message: str = "", journal: bool = True) -> None:
        self.state = state
        event = ev.StateChanged(self.step, state, message)
        if journal:
            self.emit(event)
        else:
            self._user_emit(event)

    def emit(self, event: ev.Event) -> None:
        """Record ``event`` in the run directory, then hand it to the consumer (on rank 0;
        the other ranks only hand it over)."""
        if not self.world.main:
            pass
        elif isinstance(event, ev.Metrics):
            self._journal(self.store.append_metrics, _metrics_record(event), "metrics.jsonl")
        elif isinstance(event, ev.Quality):
            self._journal(self.store.append_quality, _metrics_record(event), "quality.jsonl")
        elif isinstance(event, JOURNALED):
            self._journal(self.store.append_event, ev.to_record(event), "events.jsonl")
        self._user_emit(event)

    def _journal(self, append, record: dict[str, Any], name: str) -> None:
        """Append ``record``; a failed write (a full disk) is a warning, said once."""
        try:
            append(record)
        except OSError as exc:
            self.write_warning(exc, name, name)
        else:
            self.writable(name)


def lr_factor(schedule: str, step: int, total: int) -> float:
    """What the schedule multiplies the learning rates by before step ``step + 1``."""
    if schedule == "none" or total <= 0:
        return 1.0
    progress = min(1.0, step / total)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def total_steps(cfg: Config, batches: Batches) -> int:
    """The steps a run of ``cfg`` trains: ``epochs`` passes over ``batches``, else ``steps``.

    Raises:
        GantuiError: ``epochs`` on a stream with no epochs (the 2-D mixtures)."""
    if cfg.epochs > 0:
        if batches.steps_per_epoch is None:
            raise GantuiError(f"dataset {cfg.dataset} has no epochs; set steps instead")
        return cfg.epochs * batches.steps_per_epoch
    return cfg.steps


def apply_rates(optimizers: list[tuple[torch.optim.Optimizer, float]], scale: float,
                betas: tuple[float, float]) -> None:
    """Set each optimizer's lr to its base lr times ``scale``, and its betas."""
    for opt, lr in optimizers:
        for group in opt.param_groups:
            group["lr"] = lr * scale
            group["betas"] = betas


def _metrics_record(event: ev.Metrics | ev.Quality) -> dict[str, Any]:
    record = ev.to_record(event)
    record.pop("event")
    for key in ev.OPTIONAL_METRICS:  # no InfoGAN code, no chance: nothing to record
        if not math.isfinite(record.get(key, 0.0)):
            del record[key]
    return record


def _read_back(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q's cross-entropy on ``logits`` against ``target`` and the share it read right
    (InfoGAN's code, AC-GAN's class)."""
    read = (logits.detach().argmax(1) == target).float().mean()
    return torch.nn.functional.cross_entropy(logits, target), read
