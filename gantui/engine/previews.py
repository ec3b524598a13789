"""The preview room: the fixed-noise sample grid, drawn between steps on rank 0.

The fixed inputs (noise, labels, one real image per class for a cVAE-GAN) are made once and
saved in checkpoints, so a resumed run keeps showing the same samples. A grid is saved at full
resolution under ``samples/`` (a failed write is a warning) and emitted downsampled as a
:class:`~gantui.events.Preview` (a :class:`~gantui.events.Points` scatter for the ring).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from gantui import events as ev
from gantui.data.grids import grid_image, scatter_image
from gantui.data.sources import MixtureBatches
from gantui.models.latent import code_rows, latent, with_code
from gantui.models.latent import codes as latent_codes
from gantui.quality.metrics import diversity, mode_coverage

if TYPE_CHECKING:
    from gantui.engine.trainer import Trainer

PREVIEW_MAX_SIDE = 256
"""The longer side, in pixels, of the grid sent to the dashboard."""
RING_PREVIEW_POINTS = 512
RING_EVAL_POINTS = 2500


class Previews:
    """Draws :attr:`fixed_noise` through the generator the run shows (the EMA one when on)."""

    def __init__(self, trainer: Trainer) -> None:
        self.t = trainer
        cfg, device = trainer.cfg, trainer.device
        gen = torch.Generator().manual_seed(cfg.seed + 2)
        if cfg.conditional:  # a row per class
            self.nrow = max(1, cfg.n_samples // cfg.n_classes)
            labels = torch.arange(cfg.n_classes).repeat_interleave(self.nrow)
            self.fixed_labels: torch.Tensor | None = labels.to(device)
            self.fixed_noise = latent(cfg, len(labels), gen).to(device)
        elif (codes := code_rows(cfg, cfg.n_samples)) is not None:
            # InfoGAN or clusters: a row per code value, so each row shows what it came to mean
            self.nrow = cfg.n_samples // latent_codes(cfg)
            self.fixed_labels = None
            self.fixed_noise = with_code(cfg, latent(cfg, len(codes), gen), codes).to(device)
        else:
            self.nrow = max(1, round(math.sqrt(cfg.n_samples)))
            self.fixed_labels = None
            self.fixed_noise = latent(cfg, cfg.n_samples, gen).to(device)
        self.fixed_real = self._first_of_each_class() if cfg.encoder else None
        """One real image per class: the preview shows it beside its reconstruction."""

    def _first_of_each_class(self) -> torch.Tensor:
        """The first training image of each class, as the model sees it ([-1, 1])."""
        images, labels = self.t.batches.images, self.t.batches.labels
        first = [int((labels == k).nonzero()[0]) for k in range(self.t.cfg.n_classes)]
        return images[first].float().div(127.5).sub(1.0)

    @torch.no_grad()
    def draw(self) -> None:
        """Run G in eval mode on the fixed noise; save the grid and emit a preview (rank 0)."""
        t = self.t
        if not t.world.main:
            return
        t.G_eval.eval()
        try:
            if isinstance(t.batches, MixtureBatches):
                self._points()
                return
            images = t.G_eval(self.fixed_noise, self.fixed_labels).float()
            if t.E is not None and self.fixed_real is not None:
                images = self._with_reconstructions(images)
        finally:
            t.G.train()
            if t.E is not None:
                t.E.train()
        grid = grid_image(images, self.nrow)
        self._save(grid)
        preview = downsample(grid, PREVIEW_MAX_SIDE)
        c, h, w = preview.shape
        pixels = preview.mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous()
        score = diversity(images)
        t.emit(ev.Preview(t.step, pixels.cpu().numpy().tobytes(), h, w, c, self.nrow, score))
        for kind, message in t.health.on_samples(score):
            t.emit(ev.Alert(t.step, kind, message))

    def _with_reconstructions(self, images: torch.Tensor) -> torch.Tensor:
        """The first two columns of each class row become a real image of that class and
        G(mu(E(image)), class): inputs beside reconstructions, the rest free samples."""
        t = self.t
        assert t.E is not None and self.fixed_real is not None
        t.E.eval()
        labels = torch.arange(t.cfg.n_classes, device=t.device)
        rebuilt = t.G_eval(t.E(self.fixed_real)[0], labels).float()
        out = images.clone()
        if self.nrow >= 2:
            out[0::self.nrow] = self.fixed_real
            out[1::self.nrow] = rebuilt
        return out

    def _points(self) -> None:
        t = self.t
        gen = torch.Generator().manual_seed(t.cfg.seed + 3)
        z = latent(t.cfg, RING_EVAL_POINTS, gen).to(t.device)
        points = t.G_eval(z).float().cpu()
        centres = t.batches.centers
        covered, quality = mode_coverage(points, centres, t.batches.sigma)
        shown = tuple((round(x, 4), round(y, 4)) for x, y in points[:RING_PREVIEW_POINTS].tolist())
        modes = tuple(tuple(m) for m in centres.tolist())
        self._save(scatter_image(points, modes=centres))
        t.emit(ev.Points(t.step, shown, modes, covered, quality))
        for kind, message in t.health.on_samples(diversity(points[:256])):
            t.emit(ev.Alert(t.step, kind, message))

    def _save(self, grid: torch.Tensor) -> None:
        t = self.t
        try:
            t.store.save_grid(t.step, grid)
        except OSError as exc:  # a full disk: the preview still shows
            t.write_warning(exc, "samples", f"samples/step-{t.step:08d}.png")
        else:
            t.writable("samples")


def downsample(grid: torch.Tensor, max_side: int) -> torch.Tensor:
    """Shrink a (C, H, W) grid so its longer side is at most ``max_side`` (area filter)."""
    _, h, w = grid.shape
    scale = max_side / max(h, w)
    if scale >= 1:
        return grid
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    return torch.nn.functional.interpolate(grid[None], size=size, mode="area")[0]
