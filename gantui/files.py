"""Tolerant readers for run-directory files, free of torch so watching starts fast.

Each returns what it can read and never raises for a missing, torn, foreign or hostile file
(invalid UTF-8, absurd nesting, numbers of thousands of digits, a directory where a file
should be): a run directory may be written by another process at any moment.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

MAX_INT = 2**63 - 1
"""Largest magnitude :func:`as_int` accepts: beyond it a value is garbage, not a step."""

PARSE_ERRORS = (ValueError, RecursionError)
"""What ``json.loads`` and ``tomllib`` raise on hostile input: syntax errors, invalid UTF-8,
integers over Python's digit limit (all ``ValueError``) and deep nesting."""


def parse_record(line: bytes | str) -> dict[str, Any] | None:
    """One JSON-lines record: the object on ``line``, or None for a blank, torn, foreign or
    hostile line."""
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except PARSE_ERRORS:
        return None
    return record if isinstance(record, dict) else None


def read_toml_dict(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; {} when missing, unreadable or invalid."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, *PARSE_ERRORS):
        return {}


def toml_readable(path: Path) -> bool:
    """True when ``path`` is a file holding valid TOML."""
    try:
        with path.open("rb") as fh:
            tomllib.load(fh)
    except (OSError, *PARSE_ERRORS):
        return False
    return True


def read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object file as a dict; {} when missing, invalid or not an object."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    return parse_record(data) or {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete object in a JSON-lines file; torn, garbled or non-UTF-8 lines are
    skipped, and a path that is missing or not a readable file gives []."""
    try:
        data = path.read_bytes()
    except OSError:
        return []
    return [r for r in map(parse_record, data.split(b"\n")) if r is not None]


def as_int(value: Any) -> int | None:
    """A JSON value as an int (whole floats too); None for anything else, bools included, and
    for magnitudes past :data:`MAX_INT`."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        if not value.is_integer():
            return None
        value = int(value)
    if isinstance(value, int) and -MAX_INT <= value <= MAX_INT:
        return value
    return None


def as_float(value: Any) -> float | None:
    """A JSON number as a float; None for anything else (bools, strings, lists)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float
        return None
