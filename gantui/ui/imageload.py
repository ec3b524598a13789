"""textual-image, imported quietly: without its import-time terminal queries, with the cell
size gantui measured. Both the mode choice (:mod:`gantui.ui.graphics`) and the pixel widgets
(:mod:`gantui.ui.picture`) sit above this module."""

from __future__ import annotations

import sys

DEFAULT_CELL = (10, 20)
"""Cell size in pixels (width, height) when the terminal does not say (a VT340's)."""


class _NotATerminal:
    """Stands in for ``sys.__stdout__`` while textual-image is imported, so it asks nothing."""

    def __init__(self, stream: object) -> None:
        self._stream = stream

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str) -> object:
        return getattr(self._stream, name)


def load_textual_image(cell: tuple[int, int]) -> None:
    """Import textual-image without its import-time terminal queries, its cell size set to
    ``cell``. Safe to call again (only the cell size changes).

    On import, ``textual_image.renderable`` sends Device Attributes and a Kitty query when
    ``sys.__stdout__`` is a terminal (``termios`` on stdin, 0.1 s per byte), and
    ``textual_image.widget`` measures the cell size (``TIOCGWINSZ``, then a query). Both are
    skipped here: stdout looks like no terminal during the import, and the cell size is
    already cached.
    """
    set_cell(cell)
    if "textual_image.widget" in sys.modules:
        return
    real = sys.__stdout__
    sys.__stdout__ = _NotATerminal(real)  # type: ignore[assignment]
    try:
        import textual_image.renderable  # noqa: F401 - its detection runs (and finds no tty)
    finally:
        sys.__stdout__ = real
    import textual_image.widget  # noqa: F401 - get_cell_size() is answered from the cache


def set_cell(cell: tuple[int, int]) -> None:
    """Tell textual-image the terminal's cell size (it caches one for the process)."""
    from textual_image import _terminal

    _terminal.get_cell_size._result = _terminal.CellSize(*cell)  # type: ignore[attr-defined]


def current_cell() -> tuple[int, int]:
    """The cell size textual-image draws with (:data:`DEFAULT_CELL` before it is loaded)."""
    terminal = sys.modules.get("textual_image._terminal")
    cached = getattr(getattr(terminal, "get_cell_size", None), "_result", None)
    return (cached.width, cached.height) if cached is not None else DEFAULT_CELL
