"""The yardsticks of ``gantui bench``: a bare training loop and the data pipeline alone.

The bare loop trains the same models on the same batches with the same losses, optimizers,
speed options, lr schedule, DiffAugment (``diffaug``), instance noise, R1 and moving
average of G (``ema``) as
:class:`~gantui.engine.trainer.Trainer`, and nothing else: no events,
no store, no statistics, no previews, no control. It syncs with the device once per
``log_every`` steps, as the trainer does, and reports images per second over the intervals
after the first (the warm-up), the way ``metrics.jsonl`` is read for the trainer. An
encoder (``encoder``), InfoGAN's Q (``info_codes``) or AC-GAN's classifier (``ac_weight``) is
not in it: with those the trainer's extra networks count as its overhead, which ``gantui
bench`` says.

Run as ``python -m gantui.perf.bare SPEC_JSON`` so each measurement is a fresh process; it
prints one JSON object.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

import torch

from gantui import config as config_mod
from gantui import procs
from gantui.config import Config
from gantui.data.batches import make_batches
from gantui.engine import ema, fast
from gantui.engine.augment import AugmentChance, perturb
from gantui.engine.losses import d_loss, g_loss, r1_due, r1_penalty
from gantui.engine.trainer import apply_rates, lr_factor, total_steps
from gantui.errors import GantuiError
from gantui.models.latent import training_noise
from gantui.quality.diagnostics import real_threshold


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class BareLoop:
    """D step(s) then G step, as plain as PyTorch's DCGAN example, on gantui's models."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        models = fast.training_models(cfg, device)
        self.G, self.D, self.input = models.G, models.D, models.input
        self.g, self.d = models.G_step, models.D_step
        self.d_eager = models.D_eager
        self.steps = 0
        betas = (cfg.beta1, cfg.beta2)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=cfg.lr_g, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=cfg.lr_d, betas=betas)
        self.batches = make_batches(cfg, device)
        self.noise = torch.Generator(device=device).manual_seed(cfg.seed + 1)
        self.amp = fast.uses_amp(cfg, device)
        self.total = total_steps(cfg, self.batches)
        # as the trainer keeps it: a frozen copy moved after each G step
        self.G_ema = ema.frozen_copy(self.G) if cfg.ema else None
        self.chance = AugmentChance(real_threshold(cfg.loss), device)  # ada_target

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return perturb(x, self.cfg, self.steps, self.total, self.noise, self.chance.p(self.cfg))

    def _z(self, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        return training_noise(self.cfg, n, self.noise, self.device)

    def _autocast(self):
        return fast.autocast(self.amp, self.device)

    def step(self) -> int:
        """One training step; returns the real images it consumed."""
        cfg = self.cfg
        images = 0
        if cfg.lr_decay != "none":  # as the trainer sets the rates before each step
            apply_rates([(self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)],
                        lr_factor(cfg.lr_decay, self.steps, self.total), (cfg.beta1, cfg.beta2))
        for _ in range(cfg.d_steps):
            x, y = self.batches.next()
            n = x.shape[0]
            z, y_fake = self._z(n)
            r1 = r1_due(cfg.r1_gamma, cfg.r1_every, self.steps)
            with self._autocast():
                with torch.no_grad():
                    fake = self._augment(self.g(z, y_fake))
                x, d = self._augment(self.input(x)), self.d
                if r1:  # as the trainer: R1 needs the real batch's gradient, D eager
                    x, d = x.detach().requires_grad_(True), self.d_eager
                out_real = d(x, y)
                loss = d_loss(cfg.loss, out_real.float(), d(fake, y_fake).float(),
                              cfg.label_smoothing)
                if r1:
                    loss = loss + r1_penalty(out_real, x, cfg.r1_gamma, cfg.r1_every)
            self.opt_d.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_d.step()
            self.chance.observe(out_real, cfg)  # as the trainer: after the update
            images += n
        z, y = self._z(cfg.batch_size)
        self.D.requires_grad_(False)
        with self._autocast():
            loss = g_loss(cfg.loss, self.d(self._augment(self.g(z, y)), y).float())
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.D.requires_grad_(True)
        self.opt_g.step()
        if self.G_ema is not None:
            ema.update(self.G_ema, self.G, cfg.ema)
        self.steps += 1
        return images

    def flops_per_image(self) -> float:
        """FLOPs of one training step (forward and backward of both nets) per real image,
        counted by PyTorch's FlopCounterMode on eager modules."""
        from torch.utils.flop_counter import FlopCounterMode

        g, d = self.g, self.d
        self.g, self.d = self.G, self.D
        try:
            with FlopCounterMode(display=False) as counter:
                images = self.step()
        finally:
            self.g, self.d = g, d
        return counter.get_total_flops() / max(images, 1)


def _close(stream: object) -> None:
    close = getattr(stream, "close", None)  # decoding workers, the cache's reader thread
    if close is not None:
        close()


def measure_loop(cfg: Config, device: torch.device, steps: int) -> dict[str, Any]:
    """Images/s of the bare loop over ``steps`` steps, per ``log_every`` interval."""
    loop = BareLoop(cfg, device)
    try:
        flops = loop.flops_per_image()
        rates = []
        images = 0
        _sync(device)
        started = time.perf_counter()
        for step in range(1, steps + 1):
            images += loop.step()
            if step % cfg.log_every == 0:
                _sync(device)
                now = time.perf_counter()
                rates.append(images / (now - started))
                images, started = 0, now
    finally:  # as the trainer does: a reader thread left pinning memory at exit aborts
        _close(loop.batches)  # the process ("terminate called", seen on an H200)
    rates = rates[1:] or rates  # the first interval holds the warm-up
    return {"img_per_s": statistics.fmean(rates) if rates else 0.0, "intervals": len(rates),
            "flops_per_image": flops}


def measure_data(cfg: Config, device: torch.device, batches: int) -> dict[str, Any]:
    """Images/s the batch stream delivers alone (to the device, as the trainer gets them)."""
    stream = make_batches(cfg, device)
    for _ in range(min(5, batches)):  # warm-up: workers start, the first reads
        stream.next()
    _sync(device)
    images = 0
    started = time.perf_counter()
    for _ in range(batches):
        x, _ = stream.next()
        images += x.shape[0]
    _sync(device)
    seconds = time.perf_counter() - started
    _close(stream)
    return {"img_per_s": images / seconds if seconds > 0 else 0.0, "batches": batches,
            "note": stream.note}


def main(argv: list[str] | None = None) -> None:
    procs.follow_parent()  # a child of gantui bench ends with it
    spec = json.loads((argv or sys.argv[1:])[0])
    try:
        _, cfg = config_mod.load(spec["preset"], spec.get("sets", []))
        device = torch.device(spec.get("device", "cpu"))
        fast.set_threads(cfg)  # as a training process sets them
        if spec["mode"] == "loop":
            result = measure_loop(cfg, device, int(spec["steps"]))
        else:
            result = measure_data(cfg, device, int(spec["batches"]))
    except GantuiError as exc:  # missing data, a user's model: as `gantui train` says it
        for line in getattr(exc, "trace", ()):
            print(line, file=sys.stderr)
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
