"""Making strings safe to print: anything that reaches a terminal goes through :func:`safe`.

A run directory can be written by any process and a control request can come from any local
script, so a string in them may hold escape sequences (colours, cursor moves, a forged
progress line after a newline), bidirectional overrides or lone surrogates that no terminal
encoding can print. :func:`safe` shows such characters as visible escapes instead.
"""

from __future__ import annotations

import unicodedata
from typing import Any

ECHO_LIMIT = 60
"""Longest echo of a user's value in an error message (characters, before the ellipsis)."""

_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
"""Control, format (bidi overrides, zero-width), surrogate, private-use, unassigned and
line/paragraph separators: none of them belongs in a one-line message."""


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def safe(text: Any, limit: int | None = None) -> str:
    """``text`` as one printable line: control and format characters, surrogates and line
    breaks become visible escapes (``\\x1b``, ``\\n``, ``\\ud800``); cut to ``limit``
    characters with an ellipsis when given.

    Fast for the common case: a plain ASCII line is returned as it is.
    """
    text = text if isinstance(text, str) else str(text)
    if not (text.isascii() and text.isprintable()):
        text = "".join(_escape(c) if unicodedata.category(c) in _UNSAFE_CATEGORIES else c
                       for c in text)
    if limit is not None and len(text) > limit:
        text = text[:limit] + "…"
    return text


def shown(value: Any, limit: int = ECHO_LIMIT) -> str:
    """A user's value as echoed in an error: its ``repr`` made safe and cut to ``limit``."""
    return safe(repr(value), limit)


def duration(seconds: float) -> str:
    """How every gantui view writes a duration: ``1h02m``, ``3m05s``, ``42s``; ``--`` when
    unknown (NaN, negative, infinite or absurd)."""
    if not isinstance(seconds, (int, float)) or seconds != seconds or not 0 <= seconds <= 1e9:
        return "--"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def value_text(value: Any) -> str:
    """How a config or journal value appears in run names, tables and figure labels:
    ``0.0002``, ``true``, ``hinge``, ``128x128`` for a list of plain values, ``-`` for None;
    deeper lists and tables (a damaged or hostile file) as ``[…]`` / ``{…}``, never recursed."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        if len(value) <= 64 and all(isinstance(v, (int, float, str)) for v in value):
            return "x".join(value_text(v) for v in value)
        return "[…]"
    if isinstance(value, dict):
        return "{…}"
    return str(value)


def number(value: float | None, digits: int = 4) -> str:
    """A loss or statistic in a table: fixed ``digits`` decimals, empty when unknown."""
    return "" if value is None else f"{value:.{digits}f}"
