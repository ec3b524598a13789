"""The one exception type users see as a one-line message."""

from __future__ import annotations


class GantuiError(Exception):
    """An expected failure (bad input, missing data, no live run): shown as one line, exit 1."""
