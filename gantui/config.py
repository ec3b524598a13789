"""Run configuration: one frozen dataclass, TOML presets, typed ``KEY=VALUE`` overrides.

A preset is a TOML file that overrides only what differs from the defaults below.
Unknown keys and ill-typed values are errors that name what is valid.
"""

from __future__ import annotations

import dataclasses
import math
import re
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gantui.errors import GantuiError
from gantui.text import safe, shown

Arch = Literal["mlp", "dcgan"]
Conditioning = Literal["none", "embedding", "onehot"]
Dataset = Literal["mnist", "folder", "ring8", "grid25", "stacked_mnist", "cifar10", "fashion",
                  "array"]
WeightInit = Literal["dcgan", "default"]
Loss = Literal["nonsaturating", "saturating", "hinge", "lsgan"]
LrDecay = Literal["none", "linear", "cosine"]
Norm = Literal["none", "batch"]


class ConfigError(GantuiError):
    """A preset, a key or a value that is not valid."""


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Defaults reproduce the ``dcgan-mnist-plain`` preset (the
    default ``dcgan-mnist`` adds its cluster code, augmentation, EMA and step count)."""

    description: str = "DCGAN on MNIST (28x28 grey)"
    """One line shown by ``gantui presets``."""

    # --- data -------------------------------------------------------------------------------
    dataset: Dataset = "mnist"
    """Where samples come from: ``mnist``, ``folder`` (any images, e.g. CelebA; conditional
    runs read one sub-folder per class), the 2-D mixtures ``ring8`` and ``grid25``,
    ``stacked_mnist`` (three MNIST digits as the channels of one image), or a set already on
    disk: ``cifar10``
    (``cifar-10-batches-py``), ``fashion`` (Fashion-MNIST idx files), ``array`` (one
    ``.npy``/``.npz`` of images). Nothing is downloaded."""
    data: str = ""
    """Data path: a torchvision MNIST root, an image folder, the folder holding
    ``cifar-10-batches-py``, a Fashion-MNIST idx folder, or a ``.npy``/``.npz`` file. Empty:
    MNIST uses the bundled 5,000-digit subset; the others require a path."""
    image_size: int = 28
    """Side of the square training images in pixels (28, or 4·2^k such as 32 and 64)."""
    channels: int = 1
    """Image channels: 1 for grey, 3 for RGB."""
    num_workers: int = 2
    """DataLoader worker processes for image folders (in-memory sets need none)."""
    train_digits: int = 0
    """MNIST: train on only this many digits, a fixed subset of the training split (to study
    a discriminator that overfits); 0 trains on all of it. A fifth of the digits is always
    held out of training, for the judge and the diagnostics."""
    data_cache: bool = True
    """Train an image folder from its ``gantui prepare`` cache (decoded once, memory-mapped)
    when one exists for this size; ``false`` decodes the files every epoch."""

    # --- models -----------------------------------------------------------------------------
    model: str = ""
    """Your own networks: a ``.py`` file or an importable module defining ``generator(cfg)``
    and ``discriminator(cfg)`` (and ``encoder(cfg)`` with ``encoder``); empty uses ``arch``.
    A relative file is looked up from the working directory, then beside the preset."""
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Free-form values for your own model (a ``[model_args]`` table in the TOML, or
    ``--set model_args.KEY=VALUE``), read as ``cfg.model_args``; not live."""
    arch: Arch = "dcgan"
    """Network family: ``mlp`` or ``dcgan`` (strided convolutions with batch norm)."""
    conditioning: Conditioning = "none"
    """Class conditioning: ``none``, ``embedding`` (learned label embedding) or ``onehot``."""
    n_classes: int = 10
    """Number of classes for conditional models (labelled folders and arrays: set from the
    data when a run starts)."""
    class_names: tuple[str, ...] = ()
    """Names of the classes in label order, shown in previews; filled from the data when a
    run starts (folder names, CIFAR-10's and Fashion-MNIST's own); empty shows numbers."""
    nz: int = 100
    """Latent dimension of z."""
    ngf: int = 32
    """DCGAN generator width (feature maps of its last hidden layer)."""
    ndf: int = 32
    """DCGAN discriminator width (feature maps of its first layer)."""
    g_hidden: tuple[int, ...] = (256, 512, 1024)
    """MLP generator hidden layer sizes."""
    g_norm: Norm = "none"
    """MLP generator: ``batch`` puts a batch norm after each hidden layer (PacGAN's G for the
    mixtures), which sharpens the jumps between modes; ``none``: plain layers. DCGAN
    generators always batch-normalise."""
    d_hidden: tuple[int, ...] = (1024, 512, 256)
    """MLP discriminator hidden layer sizes."""
    dropout: float = 0.2
    """Dropout in the MLP discriminator."""
    embed_dim: int = 10
    """Size of the label embedding (``conditioning = "embedding"``)."""
    encoder: bool = False
    """Train an encoder E with G, the cVAE-GAN of BicycleGAN: E(x) gives a latent code
    (reparameterised), G(code, y) reconstructs x, D sees reconstructions and free samples.
    Conditional DCGANs only."""
    recon_weight: float = 10.0
    """With ``encoder``: weight of the L1 reconstruction loss |G(E(x), y) - x|."""
    kl_weight: float = 0.01
    """With ``encoder``: weight of KL(E(x) || N(0, I)), which keeps codes samplable."""
    weight_init: WeightInit = "dcgan"
    """``dcgan``: N(0, 0.02) weights and N(1, 0.02) batch-norm scales; ``default``: PyTorch's."""

    # --- objective and optimisation ---------------------------------------------------------
    loss: Loss = "nonsaturating"
    """``nonsaturating`` (-log D(G(z))), ``saturating`` (log(1 - D(G(z)))), ``hinge`` or
    ``lsgan``."""
    lr_g: float = 5e-4
    """Generator Adam learning rate (live)."""
    lr_d: float = 2e-4
    """Discriminator Adam learning rate (live)."""
    beta1: float = 0.5
    """Adam beta1 for both networks (live)."""
    beta2: float = 0.999
    """Adam beta2 for both networks (live)."""
    batch_size: int = 128
    """Real images per discriminator step."""
    steps: int = 3000
    """Generator steps to train for (ignored when ``epochs`` > 0; an explicit ``--set steps=N``
    clears a preset's ``epochs``)."""
    epochs: int = 0
    """If > 0, train this many passes over the data instead of ``steps``."""
    lr_decay: LrDecay = "none"
    """Learning-rate schedule over the run: ``none``, ``linear`` (to 0 at the last step) or
    ``cosine`` (to 0); it scales the live ``lr_g`` and ``lr_d``, which the metrics record
    as set."""
    d_steps: int = 1
    """Discriminator steps per generator step (live)."""
    label_smoothing: float = 0.0
    """One-sided label smoothing: real targets become 1 - this (live)."""
    seed: int = 0
    """Seed for weights, noise and data order; the same seed gives the same run."""
    amp: bool = False
    """Mixed precision: bfloat16 autocast of the training steps where the device computes
    bfloat16 natively (GPUs of compute capability 8.0 and newer; CPUs with AVX512-BF16, AMX or
    Arm's BF16); elsewhere it is ignored, with a note."""
    tf32: bool = True
    """TensorFloat-32 matmuls and convolutions on CUDA (Ampere and newer); ignored on the
    CPU."""
    channels_last: bool = False
    """NHWC memory format for the DCGAN models and their inputs on CUDA (faster convolutions
    with ``amp`` on tensor-core GPUs); ignored on the CPU, for MLPs and with ``compile``
    (which picks convolution layouts itself)."""
    threads: int = 0
    """CPU threads for torch's operators in this process; 0 picks the cores this process may
    use (its CPU affinity and container quota). Several trainings on one machine should
    split the cores between them (``gantui sweep --parallel`` does)."""
    compile: bool = False
    """``torch.compile`` the G and D forward passes used by the training steps (slow to
    start: the first steps compile; previews, evaluation and R1 steps stay eager)."""
    sync_bn: bool = False
    """In a multi-GPU (torchrun) run, batch-norm statistics over the global batch
    (``SyncBatchNorm``) instead of each GPU's own; CUDA only, ignored in a single process."""

    # --- stabilizers ------------------------------------------------------------------------
    ema: float = 0.0
    """Decay of an exponential moving average of G's weights (e.g. 0.999); 0 is off. When on,
    previews, evaluation, ``gantui sample`` and ``gantui eval`` use the averaged G."""
    spectral_norm: bool = False
    """Spectral normalisation of every D layer (Miyato et al., SN-GAN); D's batch norms are
    dropped when it is on, as in SN-GAN."""
    r1_gamma: float = 0.0
    """Weight of the R1 penalty, gamma/2 * |grad_x D(x)|^2 on real data (Mescheder et al.);
    0 is off (live)."""
    r1_every: int = 1
    """Apply R1 on the D steps of every this-many-th training step, scaled to match (lazy
    regularisation, StyleGAN2)."""
    instance_noise: float = 0.0
    """Std of Gaussian noise added to every input of D, annealed linearly to 0 over the run;
    0 is off (live)."""
    diffaug: tuple[str, ...] = ()
    """DiffAugment (Zhao et al. 2020): differentiable augmentations of every batch D sees,
    real and fake alike, in the D and the G step: any of ``color`` (brightness, saturation,
    contrast), ``translation`` (up to 1/8 of the side) and ``cutout`` (a square of half the
    side), comma-separated, e.g. ``translation,cutout``; empty is off (live; images only)."""
    diffaug_p: float = 1.0
    """The chance that each augmentation of ``diffaug`` is applied to an image, drawn per image
    and per augmentation (``color`` counts as one); 1 augments every image (live). While
    ``ada_target`` is on, the chance is adapted instead and this key is not used."""
    ada_target: float = 0.0
    """Adaptive augmentation (Karras et al. 2020, StyleGAN2-ADA): the chance of ``diffaug``
    starts at 0 (switched off and on again, where it was) and every 4 D steps moves up when
    D's ``r_t`` (the mean sign of its outputs on the real batches) is over this target, down
    when under, by at most 1 per 100,000 real images, so augmentation grows only as D starts
    to overfit. The standard target is 0.6; 0 is off (live; needs ``diffaug``). The chance in
    use is recorded as ``aug_p``."""
    info_codes: int = 0
    """InfoGAN (Chen et al. 2016): a categorical latent code of this many values, drawn
    uniformly and fed to G one-hot after z's ``nz`` dimensions, which a network Q must read
    back from G's sample (G and Q minimise the cross-entropy, weighted by ``info_weight``).
    It gives the latent space separate parts, so G need not draw the blends between modes
    or classes a continuous z passes through; 0 is off (built-in models only)."""
    info_weight: float = 1.0
    """With ``info_codes``: weight of Q's cross-entropy in G's loss (live)."""
    ac_weight: float = 0.0
    """AC-GAN's auxiliary classifier (Odena et al. 2017) for conditional models: a network Q
    (D's layers without the label) learns the class of every real training batch, and G's
    loss adds this weight times Q's cross-entropy on G's samples against the class each was
    asked for, so a sample must read as its class to a classifier of the data as well as
    pass D. Q learns from real images only, never from G's, so G cannot teach it a code of
    its own. 0 is off (built-in models without an encoder; live while on, above 0)."""
    clusters: int = 0
    """Self-conditioning without labels: when the run starts, k-means (on 50 principal
    components of the pixels) splits the training images into this many equal-sized
    clusters. G gets a uniform cluster code, one-hot after z's ``nz`` dimensions, and D sees
    each image's cluster (a real image's own, the code a fake was drawn with), as a
    conditional D sees a class; each cluster is then a narrow part of the data that G learns
    on its own. No labels are used and the run stays unconditional: scores, previews and
    samples draw the code with z. Stacked MNIST clusters its single digits and gives each
    channel a code of its own. 0 is off (built-in models; data held in memory: mnist,
    stacked_mnist, fashion, cifar10, an array)."""
    cluster_refit: int = 0
    """With ``clusters``: rounds of moving each cluster's centre to the mean of its images
    under the equal-size split, and splitting again. k-means fits its centres to clusters of
    any size; the equal split then sends the images a full cluster leaves over to a far one,
    and a refitted split holds a purer part of the data in each cluster. 0 keeps k-means'
    centres; without ``clusters`` it does nothing."""
    pack: int = 1
    """PacGAN packing degree: D judges this many samples concatenated at once (1 is off).
    ``batch_size`` must be a multiple of it."""

    # --- quality ----------------------------------------------------------------------------
    eval_every: int = 1000
    """Steps between quality evaluations (live; 0 turns them off): ring modes, the MNIST digit
    judge's scores, FID for image folders (see ``gantui eval``)."""
    eval_samples: int = 0
    """Generated samples per evaluation; 0 picks the standard size (ring 2,500, MNIST 5,000,
    image folders 2,000)."""
    fid_weights: str = ""
    """Path to the Inception weights file (``pt_inception-2015-12-05``) for FID on image
    folders; empty looks in the torch hub cache. Nothing is downloaded."""

    # --- cadence ----------------------------------------------------------------------------
    log_every: int = 50
    """Steps between metric records (live)."""
    sample_every: int = 250
    """Steps between previews of the fixed-noise grid (live)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (live)."""
    keep_checkpoints: int = 3
    """How many recent checkpoints to keep."""
    n_samples: int = 64
    """Fixed-noise samples in the preview grid (conditional: rounded to a row per class)."""

    # --- notifications ----------------------------------------------------------------------
    notify: str = ""
    """A shell command run when the run finishes, crashes, stops on a non-finite loss or
    raises a health or quality warning (``--notify``), with ``GANTUI_RUN``, ``GANTUI_EVENT``,
    ``GANTUI_KIND``, ``GANTUI_STEP``, ``GANTUI_MESSAGE`` and ``GANTUI_RUN_DIR`` set; empty runs
    none. It never holds up or stops training; a kind of event runs it at most every 5 min."""

    def __post_init__(self) -> None:
        validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for TOML, JSON and checkpoints."""
        out = {}
        for f in fields():
            value = getattr(self, f.name)
            out[f.name] = (list(value) if isinstance(value, tuple)
                           else dict(value) if isinstance(value, dict) else value)
        return out

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and validated."""
        return dataclasses.replace(self, **changes)

    @property
    def conditional(self) -> bool:
        """True when G and D see class labels."""
        return self.conditioning != "none"

    @property
    def reader_classes(self) -> int:
        """How many values Q reads: InfoGAN's code (``info_codes``), or the class labels of
        an AC-GAN (``ac_weight`` > 0); 0 when the run has no Q."""
        return self.info_codes or (self.n_classes if self.ac_weight > 0 else 0)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(C, H, W)`` for images, ``(2,)`` for 2-D points."""
        if self.dataset in POINT_SETS:
            return (2,)
        return (self.channels, self.image_size, self.image_size)


DIFFAUG = ("color", "translation", "cutout")
"""The augmentations ``diffaug`` may name, in the order they are applied."""

POINT_SETS = ("ring8", "grid25")
"""Data sets of 2-D points (Gaussian mixtures) rather than images."""

POINT_PRESETS = {"ring8": "ring-8", "grid25": "grid-25"}
"""The preset that trains each 2-D mixture, named in the errors of a config that cannot."""

LIVE_KEYS: tuple[str, ...] = (
    "lr_g",
    "lr_d",
    "beta1",
    "beta2",
    "d_steps",
    "label_smoothing",
    "log_every",
    "sample_every",
    "checkpoint_every",
    "eval_every",
    "r1_gamma",
    "instance_noise",
    "diffaug",
    "diffaug_p",
    "ada_target",
    "info_weight",
    "ac_weight",
)
"""Keys that can be changed while a run is training."""


def fields() -> list[dataclasses.Field]:
    """The user-settable fields of :class:`Config`."""
    return list(dataclasses.fields(Config))


def field_names() -> list[str]:
    """Names of every settable key, in declaration order."""
    return [f.name for f in fields()]


def field_doc(name: str) -> str:
    """The docstring under a field, read from this module's source (for help screens)."""
    return _FIELD_DOCS.get(name, "")


_TYPES = typing.get_type_hints(Config)


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(str(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return ("comma-separated names" if typing.get_args(tp)[0] is str
                else "comma-separated integers")
    if typing.get_origin(tp) is dict:
        return "a table of names to numbers, strings or booleans"
    return getattr(tp, "__name__", str(tp))


def _unknown(key: str, valid: list[str] | tuple[str, ...]) -> ConfigError:
    kind = "live keys" if tuple(valid) == LIVE_KEYS else "valid keys"
    return ConfigError(f"unknown key {shown(key)}; {kind}: {', '.join(valid)}")


def coerce(key: str, value: Any) -> Any:
    """Convert ``value`` (a string from the command line or a TOML value) to ``key``'s type.

    Raises:
        ConfigError: unknown key, or a value that does not fit the type.
    """
    if key not in _TYPES:
        raise _unknown(key, field_names())
    tp = _TYPES[key]
    bad = ConfigError(f"bad value {shown(value)} for {key}: expected {_type_name(tp)}")
    origin = typing.get_origin(tp)
    if origin is Literal:
        if str(value) not in typing.get_args(tp):
            raise bad
        return str(value)
    if origin is dict:
        return _model_args(value, bad)
    if origin is tuple and typing.get_args(tp)[0] is str:
        if isinstance(value, str):
            value = [p.strip(" ") for p in value.split(",") if p.strip(" ")]
        if not isinstance(value, (list, tuple)) or not all(
                isinstance(v, str) and v and safe(v) == v and len(v) <= 100 for v in value):
            raise bad
        return tuple(value)
    if origin is tuple:
        if isinstance(value, str):
            parts = [p.strip(" ") for p in value.split(",") if p.strip(" ")]
        elif isinstance(value, (list, tuple)):
            parts = list(value)
        else:
            raise bad
        try:
            out = tuple(_as_int(p) for p in parts)
        except (TypeError, ValueError):
            raise bad from None
        return out
    if tp is bool:
        flag = parse_bool(value)
        if flag is None:
            raise bad
        return flag
    if tp is int:
        try:
            return _as_int(value)
        except (TypeError, ValueError):
            raise bad from None
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        if isinstance(value, str) and not _FLOAT_RE.match(value):
            raise bad  # ASCII only: no "1_000", no other scripts' digits
        try:
            out = float(value)
        except (OverflowError, ValueError):
            raise bad from None
        if not math.isfinite(out):
            raise bad
        return out
    if tp is str:
        if not isinstance(value, str) or safe(value) != value:
            raise bad  # control characters would reach the terminal in every log line
        return value
    raise bad  # pragma: no cover - every field type is handled above


_ARG_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}\Z", re.ASCII)


def _model_args(value: Any, bad: ConfigError) -> dict[str, Any]:
    """A ``model_args`` table: plain names to strings, numbers, booleans or lists of them."""
    if not isinstance(value, dict):
        raise bad
    out: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _ARG_KEY_RE.match(key):
            raise ConfigError(f"model_args: {shown(key)} is not a plain name (letters, digits, "
                              f"_)")
        if not _plain_arg(item) and not (isinstance(item, list) and len(item) <= 1024
                                         and all(_plain_arg(v) for v in item)):
            raise ConfigError(f"model_args.{key}: {shown(item)} is not a number, string, "
                              f"boolean or list of them")
        out[key] = item
    return out


def _plain_arg(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, str):
        return safe(value) == value and len(value) <= 1000
    return isinstance(value, (bool, int))


def arg_value(text: str) -> Any:
    """A ``--set model_args.KEY=VALUE`` value as TOML reads it (``64``, ``0.5``, ``true``,
    ``[1, 2]``, ``"x"``); anything else is the string itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError):
        return text


def parse_bool(value: Any) -> bool | None:
    """A boolean as ``--set`` takes it (``true``/``false``, ``1``/``0``, ``yes``/``no``,
    ``on``/``off``, any case); None when ``value`` is none of them."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    return None


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("bool is not an int")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("not an integer")
        return int(value)
    if not isinstance(value, str):
        raise TypeError(f"not a number: {type(value).__name__}")
    if _INT_RE.match(value):
        return int(value)  # over Python's digit limit: ValueError
    if not _FLOAT_RE.match(value):
        raise ValueError("not an ASCII number")
    as_float = float(value)  # accepts "1e3"
    if not as_float.is_integer():
        raise ValueError("not an integer")
    return int(as_float)


_DIGITS = r"[0-9]+(?:_[0-9]+)*"
_INT_RE = re.compile(rf"[+-]?{_DIGITS}\Z", re.ASCII)
_FLOAT_RE = re.compile(rf"[+-]?(?:{_DIGITS}(?:\.(?:{_DIGITS})?)?|\.{_DIGITS})"
                       rf"(?:[eE][+-]?{_DIGITS})?\Z", re.ASCII)
"""The numbers ``--set`` and ``ctl`` accept, as TOML writes them: ASCII digits with an optional
sign, decimal point and exponent, underscores only between digits (``5000``, ``10_000``,
``1e-4``, ``.5``); no spaces and no other scripts' digits."""


def _point_preset(dataset: str) -> str:
    """`` (--preset ring-8 trains it)`` for a 2-D mixture, else nothing."""
    preset = POINT_PRESETS.get(dataset)
    return f" (--preset {preset} trains it)" if preset else ""


def _got(value: int | float) -> str:
    """A rejected number as echoed in an error: grouped digits, cut when absurdly long."""
    return safe(f"{value:,}" if isinstance(value, int) else f"{value}", 40)


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


UPPER_BOUNDS = {
    "d_steps": 100, "seed": 2**32 - 1, "steps": 10**12, "epochs": 10**6, "n_samples": 1024,
    "num_workers": 64, "threads": 1024, "keep_checkpoints": 1000, "image_size": 1024,
    "batch_size": 65536,
    "log_every": 10**9, "sample_every": 10**9, "checkpoint_every": 10**9,
    "nz": 65536, "ngf": 4096, "ndf": 4096, "n_classes": 10000, "embed_dim": 4096,
    "eval_every": 10**9, "eval_samples": 100_000, "pack": 16, "r1_every": 1000,
    "info_codes": 10000, "clusters": 1000, "cluster_refit": 1000,
}
"""Largest accepted values: beyond them a value is a typo, and a live one could stall a run
(``d_steps`` loops inside a step, where no command can interrupt it)."""


def validate(cfg: Config) -> None:
    """Range checks that a type alone cannot express."""
    for key in ("image_size", "channels", "n_classes", "nz", "ngf", "ndf", "embed_dim",
                "batch_size", "d_steps", "log_every", "sample_every", "checkpoint_every",
                "keep_checkpoints", "n_samples"):
        _check(getattr(cfg, key) >= 1, f"{key} must be >= 1 (got {_got(getattr(cfg, key))})")
    for key in ("steps", "epochs", "num_workers", "threads", "seed", "eval_every",
                "eval_samples", "train_digits", "info_codes", "clusters", "cluster_refit"):
        _check(getattr(cfg, key) >= 0, f"{key} must be >= 0 (got {_got(getattr(cfg, key))})")
    for key, most in UPPER_BOUNDS.items():
        value = getattr(cfg, key)
        _check(value <= most, f"{key} must be <= {most:,} (got {_got(value)})")
    _check(cfg.steps > 0 or cfg.epochs > 0, "set steps > 0 or epochs > 0")
    for key in ("lr_g", "lr_d"):
        value = getattr(cfg, key)
        _check(0 < value <= 1, f"{key} must be in (0, 1] (got {value})")
    for key in ("beta1", "beta2"):
        value = getattr(cfg, key)
        _check(0 <= value < 1, f"{key} must be in [0, 1) (got {value})")
    _check(0 <= cfg.label_smoothing < 0.5,
           f"label_smoothing must be in [0, 0.5) (got {cfg.label_smoothing})")
    _check(0 <= cfg.dropout < 1, f"dropout must be in [0, 1) (got {cfg.dropout})")
    _check(cfg.g_norm == "none" or (cfg.arch == "mlp" and not cfg.model),
           "g_norm applies to the built-in MLP generator (DCGAN generators always "
           "batch-normalise; your own model brings its own layers)")
    _check(cfg.g_norm == "none" or cfg.batch_size >= 2,
           f"g_norm = \"batch\" needs batch_size >= 2 (got {cfg.batch_size})")
    _check(cfg.ema == 0 or 0.5 <= cfg.ema < 1,
           f"ema must be 0 (off) or a decay in [0.5, 1), e.g. 0.999 (got {cfg.ema})")
    _check(0 <= cfg.r1_gamma <= 1e4, f"r1_gamma must be in [0, 10000] (got {cfg.r1_gamma})")
    _check(0 <= cfg.instance_noise <= 10,
           f"instance_noise must be in [0, 10] (got {cfg.instance_noise})")
    _check(cfg.eval_samples == 0 or cfg.eval_samples >= 10,
           f"eval_samples must be 0 (the standard size) or >= 10 (got {cfg.eval_samples})")
    for key in ("pack", "r1_every"):
        _check(getattr(cfg, key) >= 1, f"{key} must be >= 1 (got {_got(getattr(cfg, key))})")
    _check(cfg.batch_size % cfg.pack == 0,
           f"batch_size ({cfg.batch_size}) must be a multiple of pack ({cfg.pack})")
    _check(cfg.pack == 1 or not cfg.conditional,
           "pack > 1 needs an unconditional model (PacGAN packs samples of any class)")
    _check(cfg.channels in (1, 3), f"channels must be 1 or 3 (got {_got(cfg.channels)})")
    for key in ("g_hidden", "d_hidden"):
        sizes = getattr(cfg, key)
        _check(1 <= len(sizes) <= 64 and all(1 <= h <= 65536 for h in sizes),
               f"{key} needs 1 to 64 layer sizes, each from 1 to 65,536")
    _check(not (cfg.dataset in POINT_SETS and cfg.data),
           f"dataset {cfg.dataset} is synthesised and reads no files; drop --data")
    _check(cfg.dataset != "stacked_mnist" or cfg.channels == 3,
           "dataset stacked_mnist stacks three digits as channels: set channels = 3")
    unknown = [name for name in cfg.diffaug if name not in DIFFAUG]
    _check(not unknown, f"diffaug: unknown augmentation {shown(unknown[0]) if unknown else ''}"
                        f"; choose from {', '.join(DIFFAUG)}")
    _check(len(set(cfg.diffaug)) == len(cfg.diffaug), "diffaug names an augmentation twice")
    _check(0.0 <= cfg.diffaug_p <= 1.0, f"diffaug_p must be from 0 to 1 (got "
                                        f"{_got(cfg.diffaug_p)})")
    _check(0.0 <= cfg.ada_target < 1.0, f"ada_target must be from 0 (off) to below 1, e.g. "
                                        f"0.6 (got {_got(cfg.ada_target)})")
    _check(not cfg.ada_target or cfg.diffaug, "ada_target adapts how often diffaug's "
           "augmentations are applied, and diffaug names none: name one (e.g. translation), "
           "or set ada_target to 0")
    _check(not (cfg.diffaug and cfg.dataset in POINT_SETS),
           f"diffaug augments images; dataset {cfg.dataset} is 2-D points"
           f"{_point_preset(cfg.dataset)}")
    _check(not cfg.class_names or len(cfg.class_names) == cfg.n_classes,
           f"class_names lists {len(cfg.class_names)} names for n_classes {cfg.n_classes}")
    if cfg.arch == "dcgan" and not cfg.model:
        _check(cfg.dataset not in POINT_SETS,
               f"dataset {cfg.dataset} needs arch = mlp{_point_preset(cfg.dataset)}")
        _check(dcgan_start_size(cfg.image_size) is not None,
               f"arch dcgan needs image_size 28 or 4*2^k (8, 16, 32, 64, 128...); "
               f"got {cfg.image_size}")
    if cfg.conditional:
        _check(cfg.dataset not in (*POINT_SETS, "stacked_mnist"),
               "conditional models need labelled data (mnist, fashion, "
               "cifar10, a folder of class folders, or an array with labels)")
        if cfg.dataset in TEN_CLASS_SETS:
            _check(cfg.n_classes >= 10, f"{cfg.dataset} has 10 classes: n_classes must be "
                                        f">= 10 (got {cfg.n_classes})")
    if cfg.encoder:
        _check(cfg.conditional and (cfg.arch == "dcgan" or bool(cfg.model)),
               "encoder needs a conditional DCGAN (arch dcgan with conditioning onehot or "
               "embedding), as ecgan-mnist, or your own model with encoder(cfg)")
        _check(cfg.dataset != "folder", "encoder needs a data set held in memory (mnist, "
               "fashion, cifar10, array), not an image folder")
    _check(cfg.info_codes == 0 or not (cfg.model or cfg.encoder),
           "info_codes needs a built-in model without an encoder (arch mlp or dcgan)")
    _check(cfg.info_codes == 0 or not cfg.conditional,
           "info_codes needs an unconditional model (conditioning = none): a class label "
           "already gives G a categorical input")
    _check(cfg.info_codes != 1, "info_codes must be 0 (off) or at least 2 (got 1)")
    if cfg.clusters:
        _check(cfg.clusters >= 2, "clusters must be 0 (off) or at least 2 (got 1)")
        _check(cfg.dataset in CLUSTER_SETS, f"clusters needs data held in memory "
               f"({', '.join(CLUSTER_SETS)}), not {cfg.dataset}")
        _check(not (cfg.model or cfg.encoder), "clusters needs a built-in model without an "
               "encoder (arch mlp or dcgan)")
        _check(not cfg.conditional, "clusters needs an unconditional model (conditioning = "
               "none): it conditions G and D on clusters in place of class labels")
        _check(not cfg.info_codes, "clusters and info_codes both give G a categorical code: "
               "choose one")
    _check(0 <= cfg.info_weight <= 1e4,
           f"info_weight must be between 0 and 10000 (got {_got(cfg.info_weight)})")
    _check(0 <= cfg.ac_weight <= 1e4,
           f"ac_weight must be between 0 and 10000 (got {_got(cfg.ac_weight)})")
    if cfg.ac_weight > 0:
        _check(cfg.conditional, "ac_weight needs a conditional model (conditioning onehot or "
               "embedding): its classifier reads the class labels")
        _check(not (cfg.model or cfg.encoder), "ac_weight needs a built-in model without an "
               "encoder (arch mlp or dcgan)")
    for key in ("recon_weight", "kl_weight"):
        _check(0 <= getattr(cfg, key) <= 1e4, f"{key} must be between 0 and 10000 "
               f"(got {_got(getattr(cfg, key))})")


TEN_CLASS_SETS = ("mnist", "fashion", "cifar10")
"""Data sets with 10 classes whose labels come from the set itself."""
CLUSTER_SETS = ("mnist", "stacked_mnist", "fashion", "cifar10", "array")
"""Image data sets read whole into memory (``clusters`` splits them when a run starts)."""


def dcgan_start_size(image_size: int) -> int | None:
    """The spatial size a DCGAN generator starts from (4 or 7), or None if unsupported."""
    for start in (7, 4):
        size = start
        while size < image_size:
            size *= 2
        if size == image_size and size > start:
            return start
    return None


# ---- presets ----------------------------------------------------------------------------------

def presets_dir() -> Path:
    """Directory holding the preset TOML files, installed or in a source checkout."""
    packaged = Path(__file__).parent / "presets"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parent.parent / "presets"


def preset_names() -> list[str]:
    """Names of the shipped presets, sorted."""
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


DEFAULT_PRESET = "dcgan-mnist"


def read_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, turning syntax errors into a one-line :class:`ConfigError`."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"no such file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: invalid TOML (not UTF-8 text)") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML (nested too deeply)") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def resolve_preset(name_or_path: str) -> tuple[str, dict[str, Any]]:
    """Find a preset by name or as a path to a TOML file; return ``(name, overrides)``."""
    candidate = Path(name_or_path).expanduser()
    if name_or_path.endswith(".toml") or candidate.is_file():
        return candidate.stem, read_toml(candidate)
    path = presets_dir() / f"{name_or_path}.toml"
    if not path.is_file():
        raise ConfigError(
            f"unknown preset {name_or_path!r}; available: {', '.join(preset_names())} "
            f"(or a path to a .toml file)"
        )
    return name_or_path, read_toml(path)


def build(overrides: dict[str, Any], sets: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then preset ``overrides``, then ``KEY=VALUE`` strings from ``--set``."""
    values: dict[str, Any] = {}
    for key, value in overrides.items():
        values[key] = coerce(key, value)
    for item in sets:
        key, value = parse_assignment(item)
        if key.startswith("model_args."):
            args = dict(values.get("model_args", {}))
            args[key.split(".", 1)[1]] = arg_value(value)
            values["model_args"] = coerce("model_args", args)
            continue
        values[key] = coerce(key, value)
    values.update(steps_over_epochs(values, sets))
    values.update(clusters_give_way(values, sets))
    try:
        return Config(**values)
    except TypeError as exc:  # pragma: no cover - coerce() rejects unknown keys first
        raise ConfigError(str(exc)) from None


def steps_over_epochs(values: dict[str, Any], sets: list[str] | tuple[str, ...]) -> dict:
    """An explicit ``--set steps=N`` wins over a preset's ``epochs`` (unless epochs is set too):
    ``{"epochs": 0}`` when that applies, else {}."""
    keys = {parse_assignment(item)[0] for item in sets}
    if "steps" in keys and "epochs" not in keys and values.get("epochs"):
        return {"epochs": 0}
    return {}


def clusters_give_way(values: dict[str, Any], sets: list[str] | tuple[str, ...]) -> dict:
    """A preset's ``clusters`` (the default preset has 50) give way to a ``--set`` that rules
    them out: your own model or encoder, class labels, ``info_codes`` or data not held in
    memory. ``{"clusters": 0}`` when that applies, else {}; ``--set clusters=N`` with any of
    them is refused by :func:`validate` as before. Works on the raw values: a Config checks
    itself when built, and would refuse the preset's clusters beside those keys."""
    keys = {parse_assignment(item)[0] for item in sets}
    if not values.get("clusters") or "clusters" in keys:
        return {}
    fields = Config.__dataclass_fields__  # the defaults, without building (and validating) one
    given = {k: values.get(k, fields[k].default) for k in
             ("model", "encoder", "conditioning", "info_codes", "dataset")}
    rules_out = {
        "model": bool(given["model"]), "encoder": bool(given["encoder"]),
        "conditioning": given["conditioning"] != "none", "info_codes": bool(given["info_codes"]),
        "dataset": given["dataset"] not in CLUSTER_SETS}
    return {"clusters": 0} if any(rules_out[k] for k in keys & rules_out.keys()) else {}


def parse_assignment(item: str) -> tuple[str, str]:
    """Split ``KEY=VALUE`` exactly as written (no spaces around ``=``); a missing ``=`` is a
    :class:`ConfigError`."""
    if "=" not in item:
        raise ConfigError(f"expected KEY=VALUE, got {shown(item)}")
    key, value = item.split("=", 1)
    return key, value


def load(preset: str | None = None, sets: list[str] | tuple[str, ...] = ()) -> tuple[str, Config]:
    """Resolve ``preset`` (default ``dcgan-mnist``) and overrides into ``(preset_name, Config)``."""
    name, overrides = resolve_preset(preset or DEFAULT_PRESET)
    cfg = build(overrides, sets)
    if cfg.model:
        given = Path(preset or DEFAULT_PRESET).expanduser()
        beside = given.parent if given.suffix == ".toml" or given.is_file() else presets_dir()
        cfg = cfg.replace(model=model_path(cfg.model, beside))
    return name, cfg


def model_path(spec: str, beside: Path) -> str:
    """A ``model`` that names a file, as an absolute path: found from the working directory,
    else beside the preset (or its parent, where ``examples/`` sits next to ``presets/``);
    a module name, or a file found nowhere, stays as written."""
    if not (spec.endswith(".py") or "/" in spec or "\\" in spec):
        return spec
    path = Path(spec).expanduser()
    for base in (Path.cwd(), beside, beside.parent):
        candidate = base / path
        if candidate.is_file():
            return str(candidate.resolve())
    return spec


def from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a config from :meth:`Config.to_dict` output (checkpoints, config.toml)."""
    return build(values)


def parse_live(key: str, value: Any) -> Any:
    """Validate a live change: ``key`` must be in :data:`LIVE_KEYS`; returns the typed value."""
    if key not in _TYPES:
        raise _unknown(key, LIVE_KEYS)
    if key not in LIVE_KEYS:
        raise ConfigError(f"{key!r} cannot be changed while training; live keys: "
                          f"{', '.join(LIVE_KEYS)}")
    return coerce(key, value)


def plain(value: Any) -> Any:
    """A config value as TOML and JSON read it back (a tuple as a list), for comparing a value
    in memory with one from a file."""
    return list(value) if isinstance(value, tuple) else value


def to_toml(values: dict[str, Any]) -> str:
    """Write a flat dict of str/int/float/bool/list values as TOML."""
    lines = []
    for key, value in values.items():
        bare = re.fullmatch(r"[A-Za-z0-9_-]+", key)  # else quoted: "a.b" is one key
        lines.append(f"{key if bare else _toml_value(key)} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table: keys are plain names (see _model_args)
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _read_field_docs() -> dict[str, str]:
    """Map each field to the docstring written under it in this file."""
    import ast

    source = Path(__file__).read_text(encoding="utf-8")
    tree = ast.parse(source)
    docs: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "Config":
            body = node.body
            for prev, nxt in zip(body, body[1:], strict=False):
                if (isinstance(prev, ast.AnnAssign) and isinstance(prev.target, ast.Name)
                        and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                        and isinstance(nxt.value.value, str)):
                    docs[prev.target.id] = " ".join(nxt.value.value.split())
    return docs


_FIELD_DOCS = _read_field_docs()
