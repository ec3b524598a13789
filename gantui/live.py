"""Live values of a user's own training script: what may change while it trains, and how a
change is checked.

The trainer's live keys are :data:`gantui.config.LIVE_KEYS`, typed by
:class:`~gantui.config.Config`.
A script that uses :mod:`gantui.api` declares its own (name, type, bounds); the spec travels
as plain JSON lists, in ``run.json`` (for ``gantui ctl``) and in the journal (for the
dashboard), so every reader checks a change exactly as the script will. Numbers follow the
grammar of ``--set``. Torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from gantui.config import _FLOAT_RE, ConfigError, _as_int, parse_bool  # the --set number grammar
from gantui.text import safe, shown

KINDS = ("float", "int", "bool", "str")
"""The types a live value may have."""


@dataclass(frozen=True)
class LiveKey:
    """One value a script lets others change while it trains."""

    name: str
    kind: str
    """``float``, ``int``, ``bool`` or ``str``."""
    low: float | None = None
    """Smallest accepted value (numbers), None for no bound."""
    high: float | None = None
    """Largest accepted value (numbers), None for no bound."""
    choices: tuple[str, ...] = ()
    """The accepted strings (``str``), empty for any printable string."""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"live value {shown(self.name)}: type must be one of "
                              f"{', '.join(KINDS)}, not {shown(self.kind)}")
        if self.low is not None and self.high is not None and self.low > self.high:
            raise ConfigError(f"live value {self.name}: low {self.low} is above high "
                              f"{self.high}")

    def parse(self, value: Any) -> Any:
        """``value`` (a string from ``ctl`` or the dashboard, or a Python value) typed and
        range-checked.

        Raises:
            ConfigError: the wrong type, or out of bounds.
        """
        bad = ConfigError(f"bad value {shown(value)} for {self.name}: expected "
                          f"{self.describe()}")
        if self.kind == "bool":
            flag = parse_bool(value)
            if flag is None:
                raise bad
            return flag
        if self.kind == "str":
            if not isinstance(value, str) or safe(value) != value:
                raise bad
            if self.choices and value not in self.choices:
                raise bad
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise bad
        try:
            if self.kind == "int":
                number: int | float = _as_int(value)
            else:
                if isinstance(value, str) and not _FLOAT_RE.match(value):
                    raise ValueError(value)
                number = float(value)
        except (TypeError, ValueError, OverflowError):
            raise bad from None
        if not math.isfinite(number):
            raise bad
        if (self.low is not None and number < self.low) or (
                self.high is not None and number > self.high):
            raise bad
        return number

    def describe(self) -> str:
        """``float in [1e-06, 1]``, ``int >= 1``, ``one of a, b``, ``bool``."""
        if self.kind == "str" and self.choices:
            return "one of " + ", ".join(self.choices)
        if self.low is not None and self.high is not None:
            return f"{self.kind} in [{self.low:g}, {self.high:g}]"
        if self.low is not None:
            return f"{self.kind} >= {self.low:g}"
        if self.high is not None:
            return f"{self.kind} <= {self.high:g}"
        return self.kind

    def to_list(self) -> list[Any]:
        """``[kind, low, high, *choices]``: plain JSON for ``run.json`` and the journal."""
        return [self.kind, self.low, self.high, *self.choices]

    @classmethod
    def from_list(cls, name: str, items: Any) -> LiveKey | None:
        """The inverse of :meth:`to_list`; None for anything malformed (a journal may hold
        anything)."""
        if not isinstance(items, list) or len(items) < 3 or items[0] not in KINDS:
            return None
        low, high = items[1], items[2]
        if not all(b is None or (type(b) in (int, float) and math.isfinite(b))
                   for b in (low, high)):
            return None
        if not all(isinstance(c, str) for c in items[3:]):
            return None
        try:
            return cls(safe(name, 60), items[0], low, high, tuple(items[3:]))
        except ConfigError:
            return None


Spec = dict[str, LiveKey]


def parse_changes(spec: Spec, changes: dict[str, Any]) -> dict[str, Any]:
    """Every change typed and checked against ``spec``.

    Raises:
        ConfigError: an unknown key (naming the live ones) or a bad value.
    """
    typed = {}
    for key, value in changes.items():
        if key not in spec:
            known = ", ".join(spec) if spec else "none (the script declared no live values)"
            raise ConfigError(f"unknown key {shown(key)}; live keys: {known}")
        typed[key] = spec[key].parse(value)
    return typed


def spec_to_json(spec: Spec) -> dict[str, list[Any]]:
    """``{name: [kind, low, high, *choices]}``."""
    return {name: key.to_list() for name, key in spec.items()}


def spec_from_json(data: Any) -> Spec | None:
    """The spec in ``data`` (from :func:`spec_to_json`), None when there is none; malformed
    entries are left out."""
    if not isinstance(data, dict):
        return None
    spec = {}
    for name, items in data.items():
        key = LiveKey.from_list(str(name), items)
        if key is not None:
            spec[key.name] = key
    return spec


def owner_spec(owner: dict[str, Any]) -> Spec | None:
    """The live spec a script's ``run.json`` declares; None for a ``gantui train`` run."""
    return spec_from_json(owner.get("live")) if owner.get("api") else None
