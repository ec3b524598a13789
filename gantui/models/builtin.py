"""Generators and discriminators: MLP and DCGAN, each optionally class-conditional.

Every discriminator returns raw logits of shape ``(N,)``; the loss decides what they mean.
Conditional models take integer labels ``y`` of shape ``(N,)``: ``embedding`` learns a label
vector, ``onehot`` concatenates a one-hot code (as extra channels for convolutions).
"""

from __future__ import annotations

import functools
import math

import torch
from torch import nn

from gantui.config import POINT_SETS, Config, dcgan_start_size
from gantui.models import user as usermodel
from gantui.models.latent import groups as latent_groups
from gantui.models.latent import width as latent_width


def _label_code(cfg: Config, discriminator: bool = False) -> tuple[nn.Module | None, int]:
    """A label encoder and its width: an embedding, a one-hot code, or nothing. With
    ``clusters``, D sees an image's cluster one-hot (G reads it from z's code instead)."""
    if discriminator and cfg.clusters:  # stacked MNIST: a cluster per channel
        return OneHot(cfg.clusters), cfg.clusters * latent_groups(cfg)
    if cfg.conditioning == "embedding":
        return nn.Embedding(cfg.n_classes, cfg.embed_dim), cfg.embed_dim
    if cfg.conditioning == "onehot":
        return OneHot(cfg.n_classes), cfg.n_classes
    return None, 0


class OneHot(nn.Module):
    """Integer labels (N,) -> float one-hot codes (N, n_classes); (N, G) labels, one per
    group -> G one-hot blocks side by side (N, G * n_classes)."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.one_hot(y, self.n_classes).float().flatten(1)


class MLPGenerator(nn.Module):
    """z (N, nz) [+ label code] -> hidden LeakyReLU layers (batch-normalised with
    ``g_norm = "batch"``) -> sample (N, *shape)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.shape = cfg.image_shape
        self.label, code = _label_code(cfg)
        layers: list[nn.Module] = []
        width = latent_width(cfg) + code
        for hidden in cfg.g_hidden:
            layers.append(nn.Linear(width, hidden))
            if cfg.g_norm == "batch":
                layers.append(nn.BatchNorm1d(hidden))
            layers.append(nn.LeakyReLU(0.2))
            width = hidden
        layers.append(nn.Linear(width, math.prod(self.shape)))
        if cfg.dataset not in POINT_SETS:
            layers.append(nn.Tanh())  # images live in [-1, 1]; 2-D points are unbounded
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.label is not None:
            z = torch.cat([z, self.label(y)], dim=1)
        return self.net(z).view(z.shape[0], *self.shape)


class MLPDiscriminator(nn.Module):
    """sample (N, *shape) flattened [+ label code] -> LeakyReLU + dropout layers -> logit (N,)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.label, code = _label_code(cfg, discriminator=True)
        layers: list[nn.Module] = []
        self.pack = cfg.pack
        width = (math.prod(cfg.image_shape) + code) * cfg.pack
        for hidden in cfg.d_hidden:
            layers += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = x.flatten(1)
        if self.label is not None:
            h = torch.cat([h, self.label(y)], dim=1)
        return self.net(packed(h, self.pack)).squeeze(1)


def _levels(cfg: Config) -> tuple[int, int]:
    """(start size, number of 2x up/down-samplings) for a DCGAN at ``cfg.image_size``."""
    start = dcgan_start_size(cfg.image_size)
    assert start is not None, "validated in config"
    return start, int(round(math.log2(cfg.image_size / start)))


class DCGANGenerator(nn.Module):
    """Radford et al.: z as a 1x1 map -> ConvT to start x start -> k x (ConvT 4/2/1, BN, ReLU)
    -> tanh image. 64x64: ngf*8@4 -> ngf*4@8 -> ngf*2@16 -> ngf@32 -> C@64.
    28x28: ngf*2@7 -> ngf@14 -> C@28."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        start, k = _levels(cfg)
        self.label, code = _label_code(cfg)
        width = cfg.ngf * 2 ** (k - 1)
        layers: list[nn.Module] = [
            # (N, nz+code, 1, 1) -> (N, width, start, start)
            nn.ConvTranspose2d(latent_width(cfg) + code, width, start, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(k - 1):
            # (N, width, s, s) -> (N, width/2, 2s, 2s)
            layers += [
                nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(width // 2),
                nn.ReLU(True),
            ]
            width //= 2
        # (N, ngf, S/2, S/2) -> (N, C, S, S)
        layers += [nn.ConvTranspose2d(width, cfg.channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.label is not None:
            z = torch.cat([z, self.label(y)], dim=1)
        return self.net[1:](self._first(z))

    def _first(self, z: torch.Tensor) -> torch.Tensor:
        """The first transposed convolution, of z as a 1x1 map, computed as the matrix
        product it is: each output pixel is z times that pixel's slice of the kernel. The
        same weights and function as ``self.net[0]`` (its state dict is unchanged); on the
        CPU the product ran in a third of the convolution's time, forward and backward
        (batch 128, nz 150, 64 x 7 x 7, one thread, 2026-12-06)."""
        first = self.net[0]
        weight = first.weight  # (nz + code, width, start, start)
        out = z @ weight.reshape(weight.shape[0], -1).to(z.dtype)
        out = out.view(z.shape[0], *weight.shape[1:])
        if weight.is_contiguous(memory_format=torch.channels_last) and weight.shape[2] > 1:
            out = out.contiguous(memory_format=torch.channels_last)  # as the layers after it
        return out


class DCGANDiscriminator(nn.Module):
    """Image [+ one label map per class or cluster] -> k x (Conv 4/2/1, BN except first,
    LeakyReLU 0.2) -> Conv start x start -> logit.
    64x64: C@64 -> ndf@32 -> ndf*2@16 -> ndf*4@8 -> ndf*8@4 -> 1."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        start, k = _levels(cfg)
        self.label, code = _label_code(cfg, discriminator=True)
        width = cfg.ndf
        self.pack = cfg.pack
        # (N/pack, (C+code)*pack, S, S) -> (N/pack, ndf, S/2, S/2), no batch norm on the input
        layers: list[nn.Module] = [
            nn.Conv2d((cfg.channels + code) * cfg.pack, width, 4, 2, 1, bias=False),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        for _ in range(k - 1):
            # (N, w, s, s) -> (N, 2w, s/2, s/2); SN-GAN drops the batch norms
            layers += [
                nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                nn.Identity() if cfg.spectral_norm else nn.BatchNorm2d(width * 2),
                nn.LeakyReLU(0.2, inplace=True),
            ]
            width *= 2
        # (N, w, start, start) -> (N, 1, 1, 1)
        layers.append(nn.Conv2d(width, 1, start, 1, 0, bias=False))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if isinstance(self.label, OneHot) and self.pack == 1:
            return self.net[1:](self._first_onehot(x, y)).flatten()
        if self.label is not None:
            code = self.label(y)[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3])
            x = torch.cat([x, code.to(x.dtype)], dim=1)
        return self.net(packed(x, self.pack)).flatten()

    def _first_onehot(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The first convolution of ``[x, one constant map per class]``, computed as the
        convolution of ``x`` plus, for the one map that is on, that class's kernel run over a
        map of ones: a response each class has whatever the image, so it is computed once
        per call for every class (C+K input channels cost C). The same weights and the same
        function as the concatenation; with 50 clusters it is most of D's work saved.

        The responses are a matrix product (each output pixel sums the kernel taps that land
        inside the image) and are picked per sample as embedding rows, summed over stacked
        MNIST's three label blocks: as a convolution of ones and an index they took a fifth
        of a stacked-mnist step on one CPU thread (150 codes, ndf 64; 2026-12-06)."""
        first = self.net[0]
        weight = first.weight  # read once: spectral norm's power iteration runs per read
        c = x.shape[1]
        image = nn.functional.conv2d(x, weight[:, :c], None, first.stride, first.padding)
        labels = weight[:, c:]  # (out, K, kh, kw)
        out, k, kh, kw = labels.shape
        h, w = image.shape[2:]
        taps = _inside_taps(x.shape[2:], first, x.device)  # (kh*kw, h*w)
        per_class = (labels.transpose(0, 1).reshape(k * out, kh * kw) @ taps.to(labels.dtype))
        per_class = per_class.reshape(k, out * h * w).to(image.dtype)
        if y.ndim == 1:
            return image + nn.functional.embedding(y, per_class).view_as(image)
        # one label per group: block g's maps are channels g*K ... g*K + K - 1
        offsets = torch.arange(y.shape[1], device=y.device) * self.label.n_classes
        picked = nn.functional.embedding_bag(y + offsets, per_class, mode="sum")
        return image + picked.view_as(image)


def _inside_taps(size: torch.Size, conv: nn.Conv2d, device: torch.device) -> torch.Tensor:
    """(kh*kw, h*w): 1 where kernel tap t of ``conv`` lands inside an image of ``size`` of
    ones for output pixel p (0 where it lands on the zero padding)."""
    kh, kw = conv.kernel_size
    ones = torch.ones(1, 1, *size, device=device)
    eye = torch.eye(kh * kw, device=device).view(kh * kw, 1, kh, kw)
    return nn.functional.conv2d(ones, eye, None, conv.stride, conv.padding)[0].flatten(1)


def _conv_trunk(cfg: Config) -> tuple[nn.Sequential, int]:
    """D's convolutions without a label or the last layer, and the width of their output
    flattened: the body of E and Q."""
    start, k = _levels(cfg)
    width = cfg.ndf
    layers: list[nn.Module] = [nn.Conv2d(cfg.channels, width, 4, 2, 1, bias=False),
                               nn.LeakyReLU(0.2, inplace=True)]
    for _ in range(k - 1):
        layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False),
                   nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, inplace=True)]
        width *= 2
    return nn.Sequential(*layers), width * start * start


class DCGANEncoder(nn.Module):
    """E of the cVAE-GAN: image -> D's conv trunk (no label: the code must carry what y does
    not) -> linear -> (mu, logvar) of a Gaussian code, each (N, nz)."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        self.net, flat = _conv_trunk(cfg)
        self.head = nn.Linear(flat, 2 * cfg.nz)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self.head(self.net(x).flatten(1)).chunk(2, dim=1)
        return mu, logvar.clamp(-10.0, 10.0)  # exp() stays finite early in training


class CodeReader(nn.Module):
    """Q of InfoGAN, a sample -> logits (N, info_codes) of the categorical code G was given,
    or AC-GAN's classifier, an image -> logits (N, n_classes) of its class
    (``cfg.reader_classes``). D's layers without packing or labels: the conv trunk for DCGAN,
    ``d_hidden`` for MLP."""

    def __init__(self, cfg: Config) -> None:
        super().__init__()
        if cfg.arch == "mlp":
            layers: list[nn.Module] = [nn.Flatten()]
            flat = math.prod(cfg.image_shape)
            for hidden in cfg.d_hidden:
                layers += [nn.Linear(flat, hidden), nn.LeakyReLU(0.2)]
                flat = hidden
            self.net = nn.Sequential(*layers)
        else:
            trunk, flat = _conv_trunk(cfg)
            self.net = nn.Sequential(trunk, nn.Flatten())
        self.head = nn.Linear(flat, cfg.reader_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.net(x))


def build_code_reader(cfg: Config) -> nn.Module:
    """Q for ``cfg.info_codes`` and ``cfg.ac_weight`` runs, initialised like G and D."""
    reader = CodeReader(cfg)
    if cfg.weight_init == "dcgan":
        reader.apply(dcgan_init)
    return reader


def build_encoder(cfg: Config) -> nn.Module:
    """E for ``cfg.encoder`` runs, initialised like G and D (or the user's own, as built)."""
    if cfg.model:
        return usermodel.build_encoder(cfg)
    encoder = DCGANEncoder(cfg)
    if cfg.weight_init == "dcgan":
        encoder.apply(dcgan_init)
    return encoder


def packed(x: torch.Tensor, pack: int) -> torch.Tensor:
    """PacGAN: ``pack`` consecutive samples side by side along dim 1, as one input of D.
    (N, F...) -> (N // pack, pack * F, ...); a ragged tail of fewer than ``pack`` is dropped."""
    if pack == 1:
        return x
    n = x.shape[0] // pack * pack
    return x[:n].reshape(n // pack, pack * x.shape[1], *x.shape[2:])


def dcgan_init(module: nn.Module) -> None:
    """DCGAN weight init: conv/linear weights N(0, 0.02); batch-norm scale N(1, 0.02), shift 0."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build_models(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """Construct ``(G, D)`` for ``cfg`` on the CPU, initialised as ``cfg.weight_init`` says.

    With ``cfg.model``, the user's own G and D (their own initialisation), with spectral norm
    and packing applied to D as for the built-in families, checked on one dry batch.

    Raises:
        gantui.models.user.UserModelError: the user's model cannot be used.
    """
    if cfg.model:
        g, d = usermodel.build(cfg)
    elif cfg.arch == "mlp":
        g, d = MLPGenerator(cfg), MLPDiscriminator(cfg)
    else:
        g, d = DCGANGenerator(cfg), DCGANDiscriminator(cfg)
    if cfg.weight_init == "dcgan" and not cfg.model:
        g.apply(dcgan_init)
        d.apply(dcgan_init)
    if cfg.spectral_norm:
        for module in list(d.modules()):
            if isinstance(module, SPECTRAL_LAYERS) and not _normalized(module):
                nn.utils.parametrizations.spectral_norm(module)
    if cfg.model:
        if cfg.pack > 1:  # the built-in Ds pack inside forward; a user's D gets packed input
            d.register_forward_pre_hook(functools.partial(_pack_hook, cfg.pack))
        usermodel.dry_batch(g, d, cfg)
    return g, d


def _pack_hook(pack: int, _module: nn.Module, args: tuple) -> tuple:
    """PacGAN for a user's D: ``pack`` consecutive samples side by side along dim 1 before D
    sees them (a forward pre-hook: D's weights and state dict stay its own)."""
    return (packed(args[0], pack), *args[1:])


SPECTRAL_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)
"""The layers ``spectral_norm`` normalises in D."""


def _normalized(module: nn.Module) -> bool:
    """True when a layer already carries spectral norm (a user's D may bring its own)."""
    return (nn.utils.parametrize.is_parametrized(module, "weight")
            or hasattr(module, "weight_orig"))
