"""Tolerant readers for run-directory files, free of torch so watching starts fast.

Each returns what it can read and never raises for a missing, torn or foreign file: a run
directory may be written by another process at any moment.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any


def read_toml_dict(path: Path) -> dict[str, Any]:
    """A TOML file as a dict; {} when missing or invalid."""
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError):
        return {}


def read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object file as a dict; {} when missing, invalid or not an object."""
    try:
        value = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete object in a JSON-lines file; a torn last line is ignored."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def as_int(value: Any) -> int | None:
    """A JSON value as an int (whole floats too); None for anything else, bools included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None
