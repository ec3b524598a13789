"""The one exception type users see as a one-line message."""

from __future__ import annotations


class GantuiError(Exception):
    """An expected failure (bad input, missing data, no live run): shown as one line, exit 1."""


PEER_LOST_EXIT = 3
"""The exit code of a torchrun rank that ended because another rank failed first (a signal,
a crash or a timeout there): the launcher names the rank whose exit code is not this one,
as torchrun's own report cannot tell two failures in the same second apart."""
