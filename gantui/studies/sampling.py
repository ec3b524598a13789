"""Samples from a trained generator: grids, latent interpolations (linear and spherical), a
row per class, one class alone.

Used by ``gantui sample``; everything here reads a checkpoint and writes a PNG, and never
touches a live run.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch

from gantui.config import POINT_SETS, Config
from gantui.data.batches import make_batches
from gantui.data.grids import grid_image, scatter_image
from gantui.data.sources import fit_split, mixture, saved_split
from gantui.errors import GantuiError
from gantui.files import read_toml_dict
from gantui.models.builtin import build_encoder, build_models
from gantui.models.latent import code as code_of
from gantui.models.latent import code_rows, latent, with_code
from gantui.models.latent import codes as latent_codes
from gantui.models.latent import groups as latent_groups
from gantui.run.restore import checker, checkpoint_config
from gantui.run.store import RunStore, StoreError, load_checkpoint_file, save_png


def load_generator(run_dir: Path, checkpoint: Path | None = None,
                   device: torch.device | None = None, best: bool = False
                   ) -> tuple[torch.nn.Module, Config, int]:
    """G from a run's newest loadable checkpoint (or ``checkpoint``, or ``best.pt`` when
    ``best``), in eval mode; the EMA generator when the checkpoint has one.

    Returns:
        ``(generator, config, step)``.
    """
    state = load_state(run_dir, checkpoint, best)
    cfg = checkpoint_config(state)
    generator, _ = build_models(cfg)
    ema = state.get("G_ema")
    generator.load_state_dict(ema if isinstance(ema, dict) else state["G"])
    generator.to(device or torch.device("cpu")).eval()
    return generator, cfg, int(state["step"])


def load_state(run_dir: Path, checkpoint: Path | None = None, best: bool = False
               ) -> dict:
    """The checkpoint a command asked for, checked to be usable (see :mod:`gantui.run.restore`).

    Raises:
        StoreError: none is usable, with why.
    """
    if checkpoint is not None:  # the user's choice: it need not be this run's own
        return load_checkpoint_file(checkpoint, checker({}, optimizers=False))
    store = RunStore.open(run_dir)
    run_config = read_toml_dict(run_dir / "config.toml")
    if best:
        if not store.best_path.is_file():
            raise StoreError(f"{run_dir} has no best checkpoint yet (checkpoints/best.pt is "
                             f"written when a quality evaluation improves; see eval_every)")
        return load_checkpoint_file(store.best_path, checker(run_config, optimizers=False))
    _, state = store.load_checkpoint(check=checker(run_config, optimizers=False))
    return state


def cluster_split(run_dir: Path, cfg: Config, checkpoint: Path | None = None,
                  best: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A clustered run's training images, uint8 as the run holds them (stacked MNIST: its
    single digits), and each image's cluster (N,) as the checkpoint says the run trained on
    them (fitted again, as a start would, for a checkpoint that does not say).

    Raises:
        GantuiError: the run has no clusters; DataError: the data cannot be read, or the
            checkpoint's clusters do not fit it.
    """
    if not cfg.clusters:
        raise GantuiError(f"{run_dir} was not trained on clusters (clusters = 0)")
    saved = load_state(run_dir, checkpoint, best).get("data", {}).get("clusters")
    batches = make_batches(dataclasses.replace(cfg, clusters=0), torch.device("cpu"))
    images = getattr(batches, "digits", None)
    images = images if images is not None else batches.images
    if not isinstance(saved, torch.Tensor):
        return images, fit_split(images, cfg.clusters, cfg.seed, cfg.cluster_refit,
                                 str(run_dir))[1]
    return images, saved_split(saved, len(images), cfg.clusters)


def latents(cfg: Config, n: int, seed: int) -> torch.Tensor:
    """``n`` latent vectors from a seeded generator (the same seed, the same z)."""
    return latent(cfg, n, torch.Generator().manual_seed(seed))


def class_rows(cfg: Config, n: int) -> tuple[torch.Tensor | None, int]:
    """Labels for a grid with a row per class (conditional runs) and the row length."""
    if not cfg.conditional:
        return None, max(1, round(math.sqrt(n)))
    cols = max(1, n // cfg.n_classes)
    return torch.arange(cfg.n_classes).repeat_interleave(cols), cols


def code_grid(cfg: Config, n: int, seed: int) -> tuple[torch.Tensor, int] | None:
    """For an InfoGAN run of images: latents with a row per code value (as its previews draw
    them, :func:`~gantui.models.latent.code_rows`) and the row length; None for any other
    run."""
    codes = code_rows(cfg, n)
    if codes is None:
        return None
    return with_code(cfg, latents(cfg, len(codes), seed), codes), n // latent_codes(cfg)


def one_code(cfg: Config, k: int, n: int, seed: int) -> torch.Tensor:
    """``n`` latents whose categorical code is ``k`` (InfoGAN and clustered runs; stacked
    MNIST's clusters: every channel's).

    Raises:
        GantuiError: the run has no code, or ``k`` is not one of its values.
    """
    values = latent_codes(cfg)
    if not values:
        raise GantuiError("--code needs an InfoGAN or clustered run (this one has "
                          "info_codes = 0 and clusters = 0)")
    if not 0 <= k < values:
        raise GantuiError(f"--code {k}: this run's code has {values} values, 0 to "
                          f"{values - 1}")
    shape = (n,) if latent_groups(cfg) == 1 else (n, latent_groups(cfg))
    return with_code(cfg, latents(cfg, n, seed), torch.full(shape, k, dtype=torch.long))


def one_class(cfg: Config, k: int, n: int) -> tuple[torch.Tensor, int]:
    """Labels for a grid of ``n`` samples all of class ``k`` (conditional runs) and the row
    length.

    Raises:
        GantuiError: the run is unconditional, or ``k`` is not one of its classes.
    """
    if not cfg.conditional:
        raise GantuiError("--class needs a conditional run (this one has conditioning = none)")
    if not 0 <= k < cfg.n_classes:
        raise GantuiError(f"--class {k}: this run has {cfg.n_classes} classes, 0 to "
                          f"{cfg.n_classes - 1}")
    return torch.full((n,), k, dtype=torch.long), max(1, round(math.sqrt(n)))


def class_by_z(cfg: Config, cols: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A row per class and a column per latent: cell ``(i, j)`` is ``G(z_j, class i)``, so a
    column shows what a class label alone changes.

    Returns:
        ``(z, labels)`` for :func:`render` with ``nrow=cols``.

    Raises:
        GantuiError: the run is unconditional.
    """
    if not cfg.conditional:
        raise GantuiError("a class grid needs a conditional run (this one has conditioning = "
                          "none)")
    z = latents(cfg, cols, seed).repeat(cfg.n_classes, 1)
    return z, torch.arange(cfg.n_classes).repeat_interleave(cols)


def slerp(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation from ``a`` (alpha 0) to ``b`` (alpha 1) along the great circle,
    with the norm interpolated linearly; straight lines where ``a`` and ``b`` are (nearly)
    parallel. ``a``, ``b``: ``(..., D)``; ``alpha`` broadcasts against them."""
    na, nb = a.norm(dim=-1, keepdim=True), b.norm(dim=-1, keepdim=True)
    ua, ub = a / na.clamp_min(1e-12), b / nb.clamp_min(1e-12)
    omega = torch.acos((ua * ub).sum(-1, keepdim=True).clamp(-1.0, 1.0))
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    direction = (torch.sin((1 - alpha) * omega) * ua + torch.sin(alpha * omega) * ub) / safe_sin
    norm = (1 - alpha) * na + alpha * nb
    return torch.where(parallel, (1 - alpha) * a + alpha * b, direction * norm)


def interpolation(cfg: Config, rows: int, steps: int, seed: int, spherical: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Each row walks from z2 to z1 as ``alpha z1 + (1 - alpha) z2``, alpha in [0, 1], or
    along the great circle between them when ``spherical`` (:func:`slerp`; the same ends, so
    the two kinds compare row by row).

    Conditional runs keep one class per row (row ``i`` has class ``i mod n_classes``); an
    InfoGAN run keeps the code of each row's z1 along the row and walks z alone (G never saw
    a blend of two code values).
    """
    if steps < 2:
        raise GantuiError("--interpolate needs at least 2 steps")
    drawn = latents(cfg, 2 * rows, seed)
    ends = drawn[:, :cfg.nz].reshape(rows, 2, cfg.nz)
    alpha = torch.linspace(0, 1, steps).view(1, steps, 1)
    if spherical:
        z = slerp(ends[:, 1:], ends[:, :1], alpha).reshape(rows * steps, cfg.nz)
    else:
        z = (alpha * ends[:, :1] + (1 - alpha) * ends[:, 1:]).reshape(rows * steps, cfg.nz)
    if latent_codes(cfg):
        z = with_code(cfg, z, code_of(cfg, drawn[0::2]).repeat_interleave(steps, dim=0))
    labels = None
    if cfg.conditional:
        labels = (torch.arange(rows) % cfg.n_classes).repeat_interleave(steps)
    return z, labels


@torch.no_grad()
def render(generator: torch.nn.Module, cfg: Config, z: torch.Tensor,
           labels: torch.Tensor | None, nrow: int) -> torch.Tensor:
    """Generate samples for ``z`` (and labels): an image grid, or a scatter for 2-D points."""
    device = next(generator.parameters()).device
    out = generator(z.to(device), None if labels is None else labels.to(device)).float().cpu()
    if cfg.dataset in POINT_SETS:
        return scatter_image(out, modes=mixture(cfg.dataset).modes)
    return grid_image(out, nrow)


def sample_grid(generator: torch.nn.Module, cfg: Config, n: int, seed: int) -> torch.Tensor:
    """The fixed-seed grid of ``n`` samples (a row per class when conditional; a scatter of
    2-D points), as ``gantui sample`` and the report draw it."""
    rows = code_grid(cfg, n, seed)
    if rows is not None:
        return render(generator, cfg, rows[0], None, rows[1])
    labels, nrow = class_rows(cfg, n)
    z = latents(cfg, n if labels is None else len(labels), seed)
    return render(generator, cfg, z, labels, nrow)


def load_encoder(run_dir: Path, cfg: Config, checkpoint: Path | None = None,
                 best: bool = False, device: torch.device | None = None) -> torch.nn.Module:
    """E of a cVAE-GAN run (``encoder``) from the same checkpoint as :func:`load_generator`."""
    encoder = build_encoder(cfg)
    encoder.load_state_dict(load_state(run_dir, checkpoint, best)["E"])
    return encoder.to(device or torch.device("cpu")).eval()


def write_sample(run_dir: Path, *, n: int = 64, interpolate: int = 0, rows: int = 8,
                 slerp: bool = False, class_: int | None = None, code: int | None = None,
                 seed: int = 0,
                 checkpoint: Path | None = None, best: bool = False, out: Path | None = None,
                 device: torch.device | None = None) -> tuple[Path, int, Config, str]:
    """``gantui sample``: a grid, an interpolation, one class or one code value, written as a
    PNG into the run's ``samples/`` (or ``out``).

    Returns:
        ``(path, step, config, kind)``.

    Raises:
        GantuiError: no usable checkpoint, or a class or code out of range.
        OSError: the PNG could not be written (``filename`` set).
    """
    store = RunStore.open(run_dir)
    generator, cfg, step = load_generator(run_dir, checkpoint, device, best=best)
    if interpolate:
        z, labels = interpolation(cfg, rows, interpolate, seed, spherical=slerp)
        image = render(generator, cfg, z, labels, interpolate)
        kind = f"{'slerp' if slerp else 'interp'}{interpolate}"
    elif class_ is not None:
        labels, nrow = one_class(cfg, class_, n)
        image = render(generator, cfg, latents(cfg, n, seed), labels, nrow)
        kind = f"class{class_}"
    elif code is not None:
        z = one_code(cfg, code, n, seed)
        image = render(generator, cfg, z, None, max(1, round(math.sqrt(n))))
        kind = f"code{code}"
    else:
        image, kind = sample_grid(generator, cfg, n, seed), "grid"
    which = "-best" if best else ""
    path = out or store.samples / f"sample-step{step:08d}{which}-{kind}-seed{seed}.png"
    try:
        save_png(image, path)
    except OSError as exc:
        exc.filename = exc.filename or str(path)
        raise
    return path, step, cfg, kind
