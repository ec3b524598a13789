"""Your own networks: a Python file or importable module that builds G and D from the config.

The contract (``model = "my_gan.py"`` or ``model = "mypkg.models"``):

* ``generator(cfg) -> nn.Module``: ``G(z, y)`` takes z ``(N, cfg.nz)`` and, when
  ``cfg.conditional``, integer labels y ``(N,)`` (else None), and returns samples of the data's
  shape ``(N, *cfg.image_shape)``, images in [-1, 1].
* ``discriminator(cfg) -> nn.Module``: ``D(x, y)`` returns one logit per sample, ``(N,)``.
* ``encoder(cfg) -> nn.Module`` (only with ``encoder = true``): ``E(x)`` returns
  ``(mu, logvar)``, each ``(N, cfg.nz)``.

``cfg`` is the run's :class:`~gantui.config.Config`; a model reads its own keys from
``cfg.model_args``. Before a run trains, one dry batch checks what the models return
(:func:`dry_batch`); an exception in the user's code is reported with the user's own
traceback lines and one gantui line (:class:`UserModelError`), never gantui's internals.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import sysconfig
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from gantui.config import POINT_SETS, Config
from gantui.errors import GantuiError
from gantui.models.latent import latent
from gantui.text import safe

CONTRACT = ("a model defines generator(cfg) and discriminator(cfg) returning torch.nn.Modules "
            "(and encoder(cfg) with encoder = true)")
DRY_BATCH = 4
"""Samples in the dry batch (times ``pack``)."""
RANGE_SLACK = 1e-3
"""How far outside [-1, 1] G's images may stray (float rounding of a tanh)."""


class UserModelError(GantuiError):
    """The user's model cannot be used. ``trace`` holds the user's own traceback lines (their
    files and lines, then the exception) to print before the one-line message."""

    def __init__(self, message: str, trace: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.trace = trace


@dataclass(frozen=True)
class Source:
    """A loaded model source."""

    spec: str
    """``cfg.model`` as given: a file path or a module name."""
    module: ModuleType
    digest: str
    """sha256 of the source file's bytes: recorded in checkpoints."""

    @property
    def label(self) -> str:
        """How messages name the source: the file's name, or the module."""
        return Path(self.spec).name if is_file_spec(self.spec) else self.spec


def is_file_spec(spec: str) -> bool:
    """True when ``model`` names a file rather than an importable module."""
    return spec.endswith(".py") or "/" in spec or "\\" in spec


_LOADED: dict[str, Source] = {}
_BUILT: dict[str, str] = {}
"""spec -> digest of the source that last built models in this process."""


def _file_of(spec: str) -> Path | None:
    """The file behind ``spec`` without importing it, or None when unknown."""
    if is_file_spec(spec):
        return Path(spec).expanduser()
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin else None


def file_digest(spec: str) -> str:
    """sha256 of the model source as it is on disk now ("" when it cannot be read)."""
    path = _file_of(spec)
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() if path else ""
    except OSError:
        return ""


def built_digest(cfg: Config) -> str:
    """The digest of the source that built this process's models for ``cfg`` ("" for the
    built-in families): what a checkpoint records."""
    if not cfg.model:
        return ""
    return _BUILT.get(cfg.model) or file_digest(cfg.model)


def load(spec: str) -> Source:
    """Import the model source (again when its file changed).

    Raises:
        UserModelError: no such file or module, or it fails to import.
    """
    if is_file_spec(spec):
        path = Path(spec).expanduser()
        if not path.exists():
            raise UserModelError(f"model file {safe(spec)} does not exist; " + CONTRACT)
        if not path.is_file():
            raise UserModelError(f"model {safe(spec)} is not a file; " + CONTRACT)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UserModelError(f"cannot read model file {safe(spec)}: "
                                 f"{exc.strerror or exc}") from None
        digest = hashlib.sha256(data).hexdigest()
        cached = _LOADED.get(spec)
        if cached is not None and cached.digest == digest:
            return cached
        name = f"gantui_model_{digest[:16]}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise UserModelError(f"model file {safe(spec)} is not a Python file; " + CONTRACT)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # dataclasses and pickling look their module up here
        try:
            module_spec.loader.exec_module(module)
        except BaseException as exc:
            sys.modules.pop(name, None)
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise _user_error(exc, f"model file {path.name} failed to import") from None
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name is not None and spec.startswith(exc.name):
                raise UserModelError(f"model {safe(spec)}: no such module or .py file; "
                                     + CONTRACT) from None
            raise _user_error(exc, f"model module {spec} failed to import") from None
        except Exception as exc:
            raise _user_error(exc, f"model module {spec} failed to import") from None
        digest = file_digest(spec)
    source = Source(spec, module, digest)
    _LOADED[spec] = source
    return source


def _builder(source: Source, name: str):
    fn = getattr(source.module, name, None)
    if not callable(fn):
        raise UserModelError(f"{source.label} has no {name}(cfg) function; " + CONTRACT)
    return fn


def _call_builder(source: Source, name: str, cfg: Config) -> nn.Module:
    fn = _builder(source, name)
    try:
        built = fn(cfg)
    except Exception as exc:
        raise _user_error(exc, f"{name}(cfg) in {source.label} raised") from None
    if not isinstance(built, nn.Module):
        raise UserModelError(f"{name}(cfg) in {source.label} returned "
                             f"{type(built).__name__}, not a torch.nn.Module")
    return built


def build(cfg: Config) -> tuple[nn.Module, nn.Module]:
    """``(G, D)`` from the user's source, without any gantui change (see
    :func:`gantui.models.builtin.build_models` for the stabilizers applied on top)."""
    source = load(cfg.model)
    G = _call_builder(source, "generator", cfg)
    D = _call_builder(source, "discriminator", cfg)
    _BUILT[cfg.model] = source.digest
    return G, D


def build_encoder(cfg: Config) -> nn.Module:
    """E from the user's source (``encoder = true``), checked on a dry batch."""
    source = load(cfg.model)
    E = _call_builder(source, "encoder", cfg)
    _check_encoder(E, cfg, source.label)
    return E


# ---- the dry batch ---------------------------------------------------------------------------

def dry_batch(G: nn.Module, D: nn.Module, cfg: Config) -> None:
    """Run G and D once on a small batch and check what they return; weights, buffers
    (batch-norm statistics, spectral-norm vectors) and the global RNG are left as they were.

    Raises:
        UserModelError: a model raised (with the user's traceback lines), or returned the wrong
            shape, type or range.
    """
    label = Path(cfg.model).name if is_file_spec(cfg.model) else cfg.model
    n = DRY_BATCH * cfg.pack
    gen = torch.Generator().manual_seed(0)
    z = latent(cfg, n, gen)
    y = torch.arange(n) % cfg.n_classes if cfg.conditional else None
    shape = tuple(cfg.image_shape)
    with _untouched(G, D):
        try:
            out = G(z, y)
        except Exception as exc:
            raise _user_error(exc, f"G of {label} raised on the dry batch (z of shape "
                              f"{tuple(z.shape)}{_labels(y)})") from None
        if not isinstance(out, torch.Tensor):
            raise UserModelError(f"G of {label} returned {type(out).__name__}; it must return "
                                 f"a tensor of shape (N, {', '.join(map(str, shape))})")
        if tuple(out.shape) != (n, *shape):
            raise UserModelError(f"G of {label} returned {tuple(out.shape)}; the data is "
                                 f"{shape} (expected {(n, *shape)} for {n} z)")
        if not out.is_floating_point() or not bool(out.isfinite().all()):
            raise UserModelError(f"G of {label} returned non-finite or non-float values "
                                 f"({out.dtype})")
        low, high = float(out.min()), float(out.max())
        if cfg.dataset not in POINT_SETS and (low < -1 - RANGE_SLACK or high > 1 + RANGE_SLACK):
            raise UserModelError(f"G of {label} returned values in [{low:.3g}, {high:.3g}]; "
                                 f"images must be in [-1, 1] (end G with a tanh)")
        fed = (f"x of shape {tuple(out.shape)}{_labels(y)}"
               + (f", packed by {cfg.pack} into {(n // cfg.pack, cfg.pack * shape[0], *shape[1:])}"
                  if cfg.pack > 1 else ""))
        try:
            logits = D(out, y)
        except Exception as exc:
            why = (f"; pack = {cfg.pack} needs a D that takes pack * channels inputs "
                   f"(read cfg.pack), or set pack = 1" if cfg.pack > 1 else "")
            raise _user_error(exc, f"D of {label} raised on the dry batch ({fed}){why}") from None
        expected = n // cfg.pack
        if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (expected,):
            got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise UserModelError(f"D of {label} returned {got} for {fed}; it must return one "
                                 f"logit per sample, shape ({expected},) (e.g. .flatten())")
        if not logits.is_floating_point() or not bool(logits.isfinite().all()):
            raise UserModelError(f"D of {label} returned non-finite or non-float logits")


def _check_encoder(E: nn.Module, cfg: Config, label: str) -> None:
    n = DRY_BATCH
    x = torch.rand((n, *cfg.image_shape), generator=torch.Generator().manual_seed(0)) * 2 - 1
    with _untouched(E):
        try:
            out = E(x)
        except Exception as exc:
            raise _user_error(exc, f"E of {label} raised on the dry batch (x of shape "
                              f"{tuple(x.shape)})") from None
    ok = (isinstance(out, (tuple, list)) and len(out) == 2
          and all(isinstance(t, torch.Tensor) and tuple(t.shape) == (n, cfg.nz) for t in out))
    if not ok:
        got = (tuple(tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
                     for t in out) if isinstance(out, (tuple, list)) else type(out).__name__)
        raise UserModelError(f"E of {label} returned {got}; it must return (mu, logvar), each "
                             f"of shape {(n, cfg.nz)}")


def _labels(y: torch.Tensor | None) -> str:
    return "" if y is None else f" and labels y of shape {tuple(y.shape)}"


class _untouched:
    """Run modules under no_grad in their current mode, then put back their state dicts and
    the global RNG: the dry batch leaves no trace in training."""

    def __init__(self, *modules: nn.Module) -> None:
        self.modules = modules

    def __enter__(self) -> None:
        self.saved = [{k: v.detach().clone() for k, v in m.state_dict().items()}
                      for m in self.modules]
        self.rng = torch.get_rng_state()
        self.grad = torch.no_grad()
        self.grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self.grad.__exit__(*exc)
        torch.set_rng_state(self.rng)
        for module, state in zip(self.modules, self.saved, strict=True):
            module.load_state_dict(state)


# ---- the user's traceback --------------------------------------------------------------------

_HIDDEN = tuple(str(Path(p).resolve()) for p in {
    Path(__file__).resolve().parent.parent,  # gantui
    Path(torch.__file__).resolve().parent,
    sysconfig.get_paths()["stdlib"],
    sysconfig.get_paths()["platstdlib"],
})


def _user_frame(filename: str) -> bool:
    if filename.startswith("<"):
        return False  # <frozen importlib._bootstrap>, <string>
    try:
        resolved = str(Path(filename).resolve())
    except OSError:
        return True
    return not any(resolved == p or resolved.startswith(p + "/") for p in _HIDDEN)


def user_trace(exc: BaseException) -> tuple[str, ...]:
    """The traceback lines of ``exc`` that point into the user's own files, then the
    exception itself (a SyntaxError with its file, line and caret)."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if _user_frame(f.filename)]
    lines = [line.rstrip("\n") for chunk in traceback.format_list(frames)
             for line in chunk.splitlines()]
    lines += [line.rstrip("\n") for chunk in traceback.format_exception_only(type(exc), exc)
              for line in chunk.splitlines()][-6:]
    return tuple(lines[-40:])


def _user_error(exc: BaseException, message: str) -> UserModelError:
    return UserModelError(f"{message} ({type(exc).__name__}; its traceback is above)",
                          user_trace(exc))
