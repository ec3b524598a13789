"""Tolerant readers for run-directory files, free of torch so watching starts fast.

Each returns what it can read and never raises for a missing, torn, foreign or hostile file
(invalid UTF-8, absurd nesting, numbers of thousands of digits, a directory where a file
should be): a run directory may be written by another process at any moment.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tomllib
from pathlib import Path
from typing import Any, BinaryIO

MAX_INT = 2**63 - 1
"""Largest magnitude :func:`as_int` accepts: beyond it a value is garbage, not a step."""

PARSE_ERRORS = (ValueError, RecursionError)
"""What ``json.loads`` and ``tomllib`` raise on hostile input: syntax errors, invalid UTF-8,
integers over Python's digit limit (all ``ValueError``) and deep nesting."""


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading only if it is a regular file: a FIFO or a device planted in a
    run directory would otherwise block a reader for ever.

    Raises:
        OSError: missing, unreadable, or not a regular file.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path) -> bytes:
    """The bytes of a regular file (see :func:`open_regular`)."""
    with open_regular(path) as fh:
        return fh.read()


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
        with open_regular(path) as fh:
            return tomllib.load(fh)
    except (OSError, *PARSE_ERRORS):
        return {}


def toml_readable(path: Path) -> bool:
    """True when ``path`` is a file holding valid TOML."""
    try:
        with open_regular(path) as fh:
            tomllib.load(fh)
    except (OSError, *PARSE_ERRORS):
        return False
    return True


def read_json_dict(path: Path) -> dict[str, Any]:
    """A JSON object file as a dict; {} when missing, invalid or not an object."""
    try:
        data = read_bytes(path)
    except OSError:
        return {}
    return parse_record(data) or {}


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Every complete object in a JSON-lines file; torn, garbled or non-UTF-8 lines are
    skipped, and a path that is missing or not a readable file gives []."""
    try:
        data = read_bytes(path)
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


def cache_root(cache_dir: Path | None = None) -> Path:
    """Where gantui keeps what it builds once per machine (digit judges, FID statistics,
    prepared image folders): ``cache_dir``, else ``$GANTUI_CACHE``, else ``~/.cache/gantui``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("GANTUI_CACHE", "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gantui"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file, fsync and rename: all or nothing.

    Raises:
        OSError: naming ``path`` (not the temp file), which is then left as it was.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise naming(exc, path) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # only left when a write failed
    fsync_dir(path.parent)


def naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as an error about ``path`` (the file a person knows, not a temp file)."""
    return OSError(exc.errno, exc.strerror or str(exc), str(path))


def free_bytes(path: Path) -> int | None:
    """Free space, in bytes, on the file system that holds ``path``; None when unknown."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (best effort: not every file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
