"""The evaluation harness: how good is this generator, in numbers that compare across steps.

The trainer builds one :class:`Evaluator` per run and calls :meth:`Evaluator.evaluate` with its
generator every so often. What is measured depends on the data:

* ``ring`` (the 2-D mixtures ``ring8`` and ``grid25``): modes covered and the high-quality
  fraction (VEEGAN / PacGAN), from 2,500 samples.
* ``stacked`` (``stacked_mnist``): modes covered of 1,000 and ``kl`` (mode histogram vs
  uniform) from 26,000 samples, the digit judge reading each channel
  (:mod:`gantui.quality.stacked`); ``modes_floor`` and ``kl_floor``: real triples scored alike;
  ``kl_digits``, the part of ``kl`` that is digit skew within channels, and ``class_0``...
  ``class_9``, each digit's share over the three channels.
* ``mnist``: 5,000 generated digits scored by the digit judge (:mod:`gantui.quality.judge`)
  against its held-out real digits: ``judge_fd`` (primary), ``kid``, ``is``, ``classes``,
  ``class_entropy``, ``legible`` (and ``legible_real``, held-out real images read alike),
  ``precision``/``recall``/``density``/``coverage``, and ``cond_acc`` for
  conditional models; ``judge_acc`` and ``judge_floor`` record the yardstick's own accuracy
  and floor (held-out real against training real digits).
* ``labelled`` (CIFAR-10, Fashion-MNIST, a labelled array, the class folders of a conditional
  folder run): the same values, from 2,000 generated images, by the data's own judge
  (:func:`gantui.quality.judge.load_data_judge`), plus the folder values below on its held-out
  images.
* ``folder``: ``rcfd`` always; ``fid`` and ``kid`` when torch-fidelity and Inception weights
  are available (:mod:`gantui.quality.fid`), from 2,000 generated vs 2,000 real images.

Every evaluation draws the same z (and y) from a private generator seeded by ``cfg.seed``,
so successive scores differ only because G did; the global RNG is never touched.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gantui.config import Config
from gantui.data import datasets
from gantui.errors import GantuiError
from gantui.models.latent import latent
from gantui.quality import diagnostics as diag
from gantui.quality import fid as fidlib
from gantui.quality import scores
from gantui.quality.describe import CLASS_PREFIX
from gantui.quality.judge import (
    JudgeData,
    cache_root,
    labelled_data,
    load_data_judge,
    load_judge,
    scoring_batch,
    to_unit,
)

Log = Callable[[str], None]
RECON_N = 1000
"""Held-out digits an encoder run's reconstructions are scored on."""

DEFAULT_N = {"ring": 2500, "stacked": 26_000, "mnist": 5000, "labelled": 2000,
             "folder": 2000}
"""Generated samples per evaluation (and, for folders, real reference images)."""
BATCH = 500
"""Samples generated (and real images judged) per forward pass on an accelerator
(:func:`~gantui.quality.judge.scoring_batch`: fewer on the CPU)."""
PRDC_K = 5
"""Neighbourhood size of precision, recall, density and coverage."""
REFERENCE_MAX = 5000
"""Held-out real images a labelled run's scores compare with, at most (spread evenly)."""
HIGHER_IS_BETTER = {
    "modes": True, "hq": True, "cond_acc": True, "recon_acc": True, "recon_l1": False,
    "is": True, "classes": True, "near_copies": False,
    "class_entropy": True, "precision": True, "recall": True, "density": True,
    "coverage": True, "judge_acc": True, "judge_floor": False,
    "kl": False, "kl_digits": False, "modes_floor": True, "kl_floor": False,
    "legible": True, "legible_real": True,
    "judge_fd": False, "kid": False, "kid_std": False, "fid": False, "rcfd": False,
    "fid_kid": False, "fid_kid_std": False,
}
"""Which way each value improves (for displays; :func:`primary_order` decides "better")."""


class EvaluationError(GantuiError):
    """An evaluation that cannot be set up (unknown dataset, too few samples or images)."""


@dataclass(frozen=True)
class Score:
    """One evaluation of a generator."""

    step: int
    """Training step the generator was at."""
    values: dict[str, float]
    """Every measured value by name, e.g. ``{"judge_fd": 7.1, "kid": 0.004, "is": 8.9}``."""
    primary: str
    """Name of the headline value (the first of :func:`primary_order` that was measured)."""
    seconds: float
    """Wall time of this evaluation."""


def primary_order(kind: str, conditional: bool) -> list[tuple[str, bool]]:
    """The metrics that decide "better", in order: ``[(name, higher_is_better), ...]``.

    Compared lexicographically: the first metric that differs decides. For folders ``fid``
    comes first and is skipped where it was not measured, leaving ``rcfd``.
    """
    if kind == "ring":
        return [("modes", True), ("hq", True)]
    if kind == "stacked":
        return [("modes", True), ("kl", False)]
    if kind in ("mnist", "labelled"):
        return [("cond_acc", True), ("judge_fd", False)] if conditional else [
            ("judge_fd", False)]
    if kind == "folder":
        return [("fid", False), ("rcfd", False)]
    raise EvaluationError(f"unknown evaluation kind {kind!r} (expected ring, stacked, mnist, "
                          f"labelled or folder)")


def _order_of(score: Score) -> list[tuple[str, bool]]:
    """The order a score was made under, known from its primary metric."""
    kind = {"modes": "ring", "hq": "ring", "judge_fd": "mnist", "cond_acc": "mnist",
            "fid": "folder", "rcfd": "folder"}.get(score.primary)
    if kind == "ring" and "kl" in score.values:
        kind = "stacked"
    if kind is None:
        return [(score.primary, HIGHER_IS_BETTER.get(score.primary, False))]
    return primary_order(kind, conditional=score.primary == "cond_acc")


def is_better(a: Score, b: Score | None) -> bool:
    """True when ``a`` is strictly better than ``b`` (always, when ``b`` is None).

    The metrics of ``a``'s :func:`primary_order` that both scores hold are compared in order;
    the first that differs decides, and a tie on all of them is not better. NaN is worse than
    any number. Scores with another primary metric or no such metric in common (the
    yardstick changed, e.g. FID became available on resume) cannot be compared, and the newer
    one ``a`` counts as better.
    """
    if b is None or a.primary != b.primary:  # another yardstick: the newer one counts
        return True
    common = [(m, up) for m, up in _order_of(a) if m in a.values and m in b.values]
    if not common:
        return True
    for metric, higher in common:
        va, vb = _rank(a.values[metric], higher), _rank(b.values[metric], higher)
        if va != vb:
            return va > vb
    return False


def _rank(value: float, higher: bool) -> float:
    """``value`` turned so that larger is better, with NaN the worst."""
    if math.isnan(value):
        return -math.inf
    return value if higher else -value


class Evaluator:
    """Scores generators for one run's config; reference statistics are computed once.

    Args:
        cfg: the run's config (dataset, conditioning, nz, image size, channels, seed, data).
        device: where G runs and features are computed.
        n: generated samples per evaluation (default :data:`DEFAULT_N` for the kind);
            folders also take up to ``n`` real images as the reference.
        fid_weights: a local Inception weights file for folder FID; default: a known file
            in the torch hub cache. Nothing is ever downloaded.
        cache_dir: where the digit judge and real Inception features are cached (default
            ``$GANTUI_CACHE`` or ``~/.cache/gantui``).
        log: called with one-line messages for the user (judge training, FID unavailable).

    Raises:
        EvaluationError: unknown dataset or ``n`` below 10; gantui.data.sources.DataError: the
            data for the reference is missing.
    """

    kind: str
    """``ring``, ``stacked``, ``mnist``, ``labelled`` or ``folder``."""

    def __init__(self, cfg: Config, device: torch.device, *, n: int | None = None,
                 fid_weights: str = "", cache_dir: Path | None = None,
                 log: Log | None = None) -> None:
        kinds = {"ring8": "ring", "grid25": "ring", "stacked_mnist": "stacked",
                 "mnist": "mnist", "folder": "folder", "cifar10": "folder",
                 "fashion": "folder", "array": "folder"}  # images: scored like a folder
        if cfg.dataset not in kinds:
            raise EvaluationError(f"no evaluation for dataset {cfg.dataset!r}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.batch = scoring_batch(self.device, BATCH)
        """Samples per forward pass (fewer on the CPU)."""
        self.offenders: tuple[torch.Tensor, torch.Tensor] | None = None
        """The latest evaluation's worst near-copies and their nearest training images,
        ``(k, C, H, W)`` each in [-1, 1], worst first (MNIST-family runs)."""
        self.kind = kinds[cfg.dataset]
        self.log: Log = log or (lambda _message: None)
        self.cache_dir = cache_root(cache_dir)
        data = labelled_data(cfg) if self.kind == "folder" else None
        if data is not None:
            self.kind = "labelled"
        self.n = DEFAULT_N[self.kind] if n is None else n
        if self.n < 10:
            raise EvaluationError(f"evaluation needs n >= 10 samples (got {self.n})")
        self.order = primary_order(self.kind, cfg.conditional)
        if self.kind == "mnist":
            self._setup_mnist()
        elif self.kind == "labelled":
            self._setup_labelled(data, fid_weights)
        elif self.kind == "stacked":
            self._setup_stacked()
        elif self.kind == "folder":
            self._setup_folder(fid_weights)

    # ---- set-up per kind ------------------------------------------------------------------

    def _setup_mnist(self) -> None:
        from gantui.data.sources import (
            fit_images,  # the resize training applies to real digits
            mnist_split,
        )

        judge, self.judge_info, held_images, held_labels = load_judge(
            "full" if self.cfg.data else "bundled", self.cfg.data, self.cache_dir, self.log,
            device=self.device)
        self.judge = judge.to(self.device).eval()
        real = to_unit(fit_images(held_images, self.cfg))
        self.held_real, self.held_labels = real[:RECON_N], held_labels[:RECON_N].long()
        self.real_feats, real_logits = self._judge_pass(real)
        self.real_stats = scores.gaussian_stats(self.real_feats)
        self.legible_real = diag.legible(real_logits)
        # the digits this run trains on (never the held-out ones): memorisation's reference
        split = mnist_split(self.cfg)
        self.train_real = to_unit(fit_images(split.train_images, self.cfg))
        self.train_labels = split.train_labels.long()
        self.train_feats = self._judge_pass(self.train_real)[0]

    def _judge_pass(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The judge's features and logits of real ``images``, in batches."""
        feats, logits = [], []
        with torch.no_grad():
            for i in range(0, len(images), self.batch):
                f, lg = self.judge.features_and_logits(images[i:i + self.batch].to(self.device))
                feats.append(f)
                logits.append(lg)
        return torch.cat(feats), torch.cat(logits)

    def _setup_labelled(self, data: JudgeData, fid_weights: str) -> None:
        """The data's judge and its held-out images (at most :data:`REFERENCE_MAX`, fitted as
        training fits them) as the real reference, for the judge and the folder values."""
        from gantui.data.sources import fit_images  # as _setup_mnist does

        judge, self.judge_info, held_images, held_labels = load_data_judge(
            data, self.cache_dir, self.log, device=self.device)
        self.judge = judge.to(self.device).eval()
        count = min(len(held_labels), REFERENCE_MAX)
        picked = torch.tensor([i * len(held_labels) // count for i in range(count)])
        fitted = fit_images(held_images[picked], self.cfg).contiguous()
        real = to_unit(fitted)
        self.held_real, self.held_labels = real[:RECON_N], held_labels[picked][:RECON_N].long()
        self.real_feats, real_logits = self._judge_pass(real)
        self.real_stats = scores.gaussian_stats(self.real_feats)
        self.legible_real = diag.legible(real_logits)
        digest = hashlib.sha256(fitted.numpy().tobytes())
        digest.update(f"{self.cfg.dataset}|held-out|{self.cfg.image_size}|"
                      f"{self.cfg.channels}".encode())
        self._setup_folder(fid_weights, fidlib.FolderReference(
            root=Path(self.cfg.data), images=fitted, n_files=len(data.labels),
            key=digest.hexdigest()[:16]))

    def _setup_stacked(self) -> None:
        from gantui.data.sources import fit_images
        from gantui.quality import stacked

        judge, self.judge_info, held_images, _ = load_judge(
            "full" if self.cfg.data else "bundled", self.cfg.data, self.cache_dir, self.log,
            device=self.device)
        self.judge = judge.to(self.device).eval()
        digits = fit_images(held_images, self.cfg)[:, :1].contiguous()  # as training
        self.floor = stacked.floor(self.judge, digits, self.n, self.cfg.seed)

    def _setup_folder(self, fid_weights: str,
                      reference: fidlib.FolderReference | None = None) -> None:
        self.rcfd_net = fidlib.RandomConvFeatures().to(self.device)
        if reference is not None:
            self.reference = reference
        elif self.cfg.dataset == "folder":
            self.reference = fidlib.folder_reference(Path(self.cfg.data), self.n,
                                                     self.cfg.image_size, self.cfg.channels)
        else:
            self.reference = memory_reference(self.cfg, self.n)
        real = self.reference.images
        with torch.no_grad():
            feats = torch.cat([self.rcfd_net(fidlib.from_uint8(real[i:i + self.batch])
                                             .to(self.device))
                               for i in range(0, len(real), self.batch)])
        self.rcfd_stats = scores.gaussian_stats(feats)
        self.inception: nn.Module | None = None
        try:
            fidlib.require_torch_fidelity()
            weights = fidlib.find_inception_weights(fid_weights)
            if weights is None:
                raise fidlib.FidUnavailable(fidlib.missing_weights_message())
            self.inception = fidlib.load_inception(weights, self.device)
            self.real_inception = fidlib.real_inception_features(
                self.inception, self.reference, weights, self.cache_dir, self.log).to(
                self.device)
            self.real_inception_stats = scores.gaussian_stats(self.real_inception)
        except fidlib.FidUnavailable as exc:  # said once, here; evaluations then skip FID
            self.inception = None
            self.log(str(exc))

    @property
    def has_fid(self) -> bool:
        """True when folder (and labelled) evaluations include Inception ``fid`` and
        ``kid`` (a labelled run's ``kid`` is the judge's; Inception's is ``fid_kid``)."""
        return self.kind in ("folder", "labelled") and self.inception is not None

    # ---- evaluation -----------------------------------------------------------------------

    def _noise(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The evaluation's z (and balanced labels y): the same at every call."""
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + 4242)
        z = latent(self.cfg, self.n, gen)
        y = None
        if self.cfg.conditional:
            y = torch.arange(self.n) % self.cfg.n_classes
            y = y[torch.randperm(self.n, generator=gen)]
        return z, y

    def _batches(self, G: nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor | None]]:
        """Yield ``(samples, labels or None)`` batches of G's output on the device."""
        z, y = self._noise()
        for i in range(0, self.n, self.batch):
            zb = z[i:i + self.batch].to(self.device)
            yb = y[i:i + self.batch].to(self.device) if y is not None else None
            yield G(zb, yb).float(), yb

    def evaluate(self, G: nn.Module, step: int, encoder: nn.Module | None = None) -> Score:
        """Score ``G`` (called as ``G(z, y)``) at training step ``step``; with the ``encoder``
        of a cVAE-GAN, also how well G(E(x), y) rebuilds held-out digits.

        G (and E) run in eval mode under ``torch.no_grad()``; training modes are restored.
        """
        started = time.perf_counter()
        was_training = G.training
        G.eval()
        if encoder is not None:
            encoder.eval()
        try:
            with torch.no_grad():
                if self.kind == "ring":
                    values = self._ring(G)
                elif self.kind == "stacked":
                    values = self._stacked(G)
                elif self.kind in ("mnist", "labelled"):
                    values = self._mnist(G) if self.kind == "mnist" else self._labelled(G)
                    if encoder is not None:
                        values.update(self._reconstruction(G, encoder))
                else:
                    values = self._folder(G)
        finally:
            G.train(was_training)
        primary = next(m for m, _ in self.order if m in values)
        return Score(step=step, values=values, primary=primary,
                     seconds=time.perf_counter() - started)

    def _ring(self, G: nn.Module) -> dict[str, float]:
        from gantui.quality.metrics import mixture_coverage

        points = torch.cat([x.reshape(len(x), -1).cpu() for x, _ in self._batches(G)])
        if points.shape[1] != 2:
            _raise_shape(points, "(N, 2)")
        modes, hq = mixture_coverage(points, self.cfg.dataset)  # non-finite: low quality
        return {"modes": float(modes), "hq": float(hq)}

    def _stacked(self, G: nn.Module) -> dict[str, float]:
        from gantui.quality import stacked

        found, read = [], []
        for x, _ in self._batches(G):
            if x.ndim != 4 or x.shape[1] != 3:
                _raise_shape(x, "(N, 3, H, W) stacked digits")
            modes, logits = stacked.read_channels(self.judge, x)
            found.append(modes)
            read.append(logits)
        found = torch.cat(found)
        modes, kl = stacked.mode_scores(found)
        shares, kl_digits = stacked.digit_skew(found)
        return {"modes": float(modes), "kl": kl, "kl_digits": kl_digits,
                "modes_floor": float(self.floor[0]), "kl_floor": self.floor[1],
                "legible": diag.legible(torch.cat(read)), "legible_real": self.floor[2],
                "judge_acc": self.judge_info.accuracy,
                **{f"class_{k}": share for k, share in enumerate(shares)}}

    def _mnist(self, G: nn.Module) -> dict[str, float]:
        feats, logits, labels, images = [], [], [], []
        for x, y in self._batches(G):
            if x.ndim != 4 or x.shape[1] not in (1, 3):
                _raise_shape(x, "(N, 1 or 3, H, W) images")
            x = torch.nan_to_num(x).clamp(-1, 1)
            f, lg = self.judge.features_and_logits(x)
            images.append(x)
            feats.append(f)
            logits.append(lg)
            if y is not None:
                labels.append(y)
        return self._judged(torch.cat(feats), torch.cat(logits), labels, torch.cat(images))

    def _judged(self, fake: torch.Tensor, logits: torch.Tensor, labels: list[torch.Tensor],
                samples: torch.Tensor | None = None) -> dict[str, float]:
        """The judge's values from generated features, logits and asked-for labels; with the
        ``samples`` themselves (MNIST-family runs), memorisation against the training digits."""
        pred = logits.argmax(dim=1)
        kid_mean, kid_std = scores.kid(self.real_feats, fake)
        present, entropy = scores.class_histogram(pred, logits.shape[1])
        values = {
            "judge_fd": scores.frechet_from_stats(*self.real_stats, *scores.gaussian_stats(fake)),
            "kid": kid_mean,
            "kid_std": kid_std,
            "is": scores.classifier_score(logits.softmax(dim=1)),
            "classes": float(present),
            "class_entropy": entropy,
            "legible": diag.legible(logits),
            "legible_real": self.legible_real,
            **scores.prdc(self.real_feats, fake, k=PRDC_K),
            "judge_acc": self.judge_info.accuracy,
        }
        if math.isfinite(self.judge_info.floor):
            values["judge_floor"] = self.judge_info.floor
        if labels:
            values["cond_acc"] = scores.conditional_accuracy(pred, torch.cat(labels))
        else:  # unconditional: which classes G draws, so a vanishing one shows over time
            values.update({f"{CLASS_PREFIX}{c}": share for c, share in enumerate(
                diag.class_shares(pred, logits.shape[1]))})
        if samples is None:
            return values
        found = diag.memorisation(fake, self.train_feats, self.real_feats)
        values.update(near_copies=found.near_copies, nn_fake=found.nn_fake,
                      nn_real=found.nn_real)
        worst = found.distance.argsort()[:diag.OFFENDERS]
        self.offenders = (samples[worst.to(samples.device)].cpu(),
                          self.train_real[found.nearest[worst]].cpu())
        return values

    def _labelled(self, G: nn.Module) -> dict[str, float]:
        """The judge's values and the folder values from one pass of G."""
        feats, logits, labels, rcfd, incep = [], [], [], [], []
        shape = (self.cfg.channels, self.cfg.image_size, self.cfg.image_size)
        for x, y in self._batches(G):
            if x.ndim != 4 or x.shape[1:] != shape:
                _raise_shape(x, f"(N, {', '.join(map(str, shape))})")
            x = torch.nan_to_num(x)
            f, lg = self.judge.features_and_logits(x.clamp(-1, 1))
            feats.append(f)
            logits.append(lg)
            if y is not None:
                labels.append(y)
            images = fidlib.to_uint8(x)
            rcfd.append(self.rcfd_net(fidlib.from_uint8(images)))
            if self.inception is not None:
                incep.append(fidlib.inception_features(self.inception, images))
        values = self._judged(torch.cat(feats), torch.cat(logits), labels)
        folder = self._folder_values(rcfd, incep)
        if "kid" in folder:  # Inception's, beside the judge's kid
            folder["fid_kid"], folder["fid_kid_std"] = folder.pop("kid"), folder.pop("kid_std")
        return {**values, **folder}

    def _reconstruction(self, G: nn.Module, encoder: nn.Module) -> dict[str, float]:
        """``recon_l1``: mean |G(mu(E(x)), y) - x| per pixel on the [-1, 1] scale over
        held-out digits; ``recon_acc``: the judge's class of the rebuilt digit is y."""
        errors, hits = [], []
        for i in range(0, len(self.held_real), self.batch):
            x = self.held_real[i:i + self.batch].to(self.device)
            y = self.held_labels[i:i + self.batch].to(self.device)
            rebuilt = G(encoder(x)[0], y).float()
            errors.append((rebuilt - x).abs().flatten(1).mean(1))
            hits.append(self.judge.features_and_logits(rebuilt.clamp(-1, 1))[1].argmax(1) == y)
        return {"recon_l1": float(torch.cat(errors).mean()),
                "recon_acc": float(torch.cat(hits).float().mean())}

    def _folder(self, G: nn.Module) -> dict[str, float]:
        rcfd, incep = [], []
        for x, _ in self._batches(G):
            if x.ndim != 4 or x.shape[1:] != (self.cfg.channels, self.cfg.image_size,
                                              self.cfg.image_size):
                _raise_shape(x, f"(N, {self.cfg.channels}, {self.cfg.image_size}, "
                                f"{self.cfg.image_size})")
            images = fidlib.to_uint8(torch.nan_to_num(x))  # scored as they would be saved
            rcfd.append(self.rcfd_net(fidlib.from_uint8(images)))
            if self.inception is not None:
                incep.append(fidlib.inception_features(self.inception, images))
        return self._folder_values(rcfd, incep)

    def _folder_values(self, rcfd: list[torch.Tensor], incep: list[torch.Tensor]
                       ) -> dict[str, float]:
        """``rcfd``, and ``fid``/``kid`` when Inception features were taken."""
        values = {"rcfd": scores.frechet_from_stats(*self.rcfd_stats,
                                                    *scores.gaussian_stats(torch.cat(rcfd)))}
        if incep:
            fake = torch.cat(incep)
            values["fid"] = scores.frechet_from_stats(*self.real_inception_stats,
                                                      *scores.gaussian_stats(fake))
            # torch-fidelity's KID defaults: 100 subsets of 1,000 (fewer when n is smaller)
            values["kid"], values["kid_std"] = scores.kid(self.real_inception, fake,
                                                          subsets=100, subset_size=1000)
        return values


def memory_reference(cfg: Config, n: int) -> fidlib.FolderReference:
    """Up to ``n`` images spread evenly over a data set held in memory (CIFAR-10,
    Fashion-MNIST, an array), fitted as training fits them: the reference for its scores."""
    from gantui.data.sources import fit_images  # as _setup_mnist does

    found = datasets.read(cfg.dataset, cfg.data)
    total = len(found.images)
    count = min(n, total)
    picked = torch.tensor([i * total // count for i in range(count)])
    images = fit_images(found.images[picked], cfg).contiguous()
    digest = hashlib.sha256(images.numpy().tobytes())
    digest.update(f"{cfg.dataset}|{total}|{cfg.image_size}|{cfg.channels}".encode())
    return fidlib.FolderReference(root=Path(cfg.data), images=images, n_files=total,
                                  key=digest.hexdigest()[:16])


def _raise_shape(x: torch.Tensor, expected: str) -> None:
    raise EvaluationError(f"the generator returned shape {tuple(x.shape)}; expected {expected}")
