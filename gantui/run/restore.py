"""Whether a checkpoint can be trained on or sampled from, before anything trusts it.

A checkpoint file that unpickles is not yet a checkpoint of *this* run: it may have been
copied in from another run (another preset, other shapes), hand-edited, or written by a
future version with other field types. :func:`checker` gives :meth:`RunStore.load_checkpoint`
a test that each candidate must pass, so an unfit newest checkpoint falls back to the previous
one with a warning instead of failing with a traceback deep inside ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from gantui import config as config_mod
from gantui.config import LIVE_KEYS, Config
from gantui.errors import GantuiError
from gantui.models import user as usermodel
from gantui.models.builtin import build_code_reader, build_encoder, build_models
from gantui.run.store import StoreError
from gantui.text import safe

RESUME_KEYS = (*LIVE_KEYS, "steps", "epochs", "data", "num_workers", "data_cache",
               "keep_checkpoints", "amp", "tf32", "channels_last", "compile", "threads",
               "sync_bn",
               "ema", "r1_every",
               "eval_samples", "fid_weights", "lr_decay", "notify")
"""Keys a resumed run may change; others would no longer fit the checkpoint."""

_IGNORED = frozenset({*RESUME_KEYS, "description"})


def checkpoint_config(state: dict[str, Any]) -> Config:
    """The config a checkpoint was written with.

    Raises:
        StoreError: it is not a valid config of this gantui.
    """
    values = state.get("config")
    if not isinstance(values, dict):
        raise StoreError("its config is not a table of keys")
    try:
        return config_mod.from_dict(values)
    except GantuiError as exc:
        raise StoreError(f"its config is not valid here ({exc})") from None


def check_fits(state: dict[str, Any], cfg: Config, optimizers: bool = True) -> None:
    """Load ``state``'s weights (and optimizer moments) into fresh models built from ``cfg``.

    Raises:
        StoreError: a missing or extra weight, a shape or a type that does not fit.
    """
    G, D = build_models(cfg)
    models = [("G", G), ("D", D)]
    if cfg.encoder:
        models.append(("E", build_encoder(cfg)))
    if cfg.reader_classes:
        models.append(("Q", build_code_reader(cfg)))
    for key, model in models:
        weights = state.get(key)
        if not isinstance(weights, dict) or not all(
                isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
            raise StoreError(f"its {key} is not a table of tensors")
        try:
            model.load_state_dict(weights)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()
            detail = first[1].strip() if len(first) > 1 else first[0] if first else ""
            raise StoreError(f"its {key} weights do not fit the config "
                             f"({safe(detail, 160)}){_changed_source(state, cfg)}") from None
        if optimizers:
            _check_optimizer(state.get(f"opt_{key.lower()}"), model, f"opt_{key.lower()}")
    ema = state.get("G_ema")
    if ema is not None:
        if not isinstance(ema, dict):
            raise StoreError("its G_ema is not a table of tensors")
        try:
            G.load_state_dict(ema)
        except (RuntimeError, TypeError, AttributeError):
            raise StoreError("its G_ema weights do not fit the config") from None


def _changed_source(state: dict[str, Any], cfg: Config) -> str:
    """A hint when the user's model file is no longer the one the checkpoint was made with."""
    recorded = state.get("model_source")
    if not cfg.model or not isinstance(recorded, str) or not recorded:
        return ""
    if recorded == usermodel.file_digest(cfg.model):
        return ""
    return f"; the model source {safe(cfg.model, 80)} changed since this checkpoint"


def _check_optimizer(opt_state: Any, model: torch.nn.Module, key: str) -> None:
    if not (isinstance(opt_state, dict) and isinstance(opt_state.get("state"), dict)
            and isinstance(opt_state.get("param_groups"), list)):
        raise StoreError(f"its {key} is not an optimizer state")
    params = list(model.parameters())
    try:
        torch.optim.Adam(params).load_state_dict(opt_state)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise StoreError(f"its {key} does not fit the models ({safe(exc, 120)})") from None
    for index, moments in opt_state["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(
                moments, dict):
            raise StoreError(f"its {key} does not fit the models")
        for name in ("exp_avg", "exp_avg_sq"):
            value = moments.get(name)
            if value is not None and (not isinstance(value, torch.Tensor)
                                      or value.shape != params[index].shape):
                raise StoreError(f"its {key} moments do not fit the models")


def foreign_keys(state_config: dict[str, Any], run_config: dict[str, Any]) -> list[str]:
    """Keys that fix a run's shape and data (not live, not changeable on resume) on which a
    checkpoint's config and the run's ``config.toml`` disagree; keys either lacks (a run of an
    older version) are not compared."""
    out = []
    for key in sorted(set(state_config) & set(run_config) - _IGNORED):
        if _plain(state_config[key]) != _plain(run_config[key]):
            out.append(key)
    return out


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def checker(run_config: dict[str, Any], optimizers: bool = True
            ) -> Callable[[dict[str, Any]], None]:
    """A test for :meth:`RunStore.load_checkpoint`'s candidates: the checkpoint's config is
    valid, belongs to this run (agrees with ``run_config``, the run's ``config.toml``; {} when
    unreadable skips this) and its tensors fit the models it describes."""

    def check(state: dict[str, Any]) -> None:
        cfg = checkpoint_config(state)
        recorded = dict(state["config"])
        recorded.setdefault("preset", state.get("preset"))
        differ = foreign_keys(recorded, run_config)
        if differ:
            shown = ", ".join(f"{k} {safe(recorded[k], 20)} vs {safe(run_config[k], 20)}"
                              for k in differ[:3])
            raise StoreError(f"it belongs to another run ({shown} in config.toml)")
        check_fits(state, cfg, optimizers)

    return check
