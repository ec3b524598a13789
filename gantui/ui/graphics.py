"""Sample grids at their real resolution: which pixel protocol the terminal speaks, and how a
grid is laid out in its cells.

The mode is decided once, when the dashboard starts (before Textual owns the terminal), by
:func:`detect`: ``GANTUI_GRAPHICS`` (``auto``, ``halfblock``, ``kitty``, ``sixel``) forces one;
``auto`` uses the Kitty graphics protocol or Sixel when the terminal says it has them, and
half blocks otherwise (a browser, ``NO_COLOR``, a plain ``TERM``, no terminal, or a terminal
that answers neither). The pictures themselves are drawn by textual-image
(:mod:`gantui.ui.picture`), which is imported only in a pixel mode, and quietly: on import it
would ask the terminal itself, with short per-byte timeouts that can leave a late answer in
the input for Textual to read as key presses.

Our one query (:func:`query_terminal`) writes the Kitty graphics query, a cell-size request
and Primary Device Attributes together, then reads up to the Device Attributes answer, which
every terminal sends last: one round trip, nothing left behind to turn into keys.
"""

from __future__ import annotations

import math
import os
import re
import select
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from gantui.ui.imageload import DEFAULT_CELL, load_textual_image, set_cell

ENV_VAR = "GANTUI_GRAPHICS"
"""Environment variable that chooses the sample drawing: one of :data:`CHOICES`."""
CHOICES = ("auto", "halfblock", "kitty", "sixel")
PIXEL_MODES = ("kitty", "sixel")

PLAIN_TERMS = frozenset({"", "dumb", "linux", "vt100", "vt102", "vt220", "ansi", "xterm"})
"""``TERM`` values that ``auto`` never asks: consoles without either protocol, and plain
``xterm``, the lowest common denominator (xterm itself draws Sixel only when started as a
VT340, and tmux or screen sessions often claim to be it). Force a mode to override."""

PROBE_TIMEOUT = 1.0
"""Seconds to wait for the terminal's answer. Every terminal answers Device Attributes at
once, so this is only spent on one that never answers."""
MIN_PICTURE_SAMPLE_PX = 16
"""Smallest on-screen size, in real pixels, a sample may shrink to before the preview shows a
top-left sub-grid instead of the whole grid."""

_KITTY_ID = 4711
_QUERY_KITTY = f"\x1b_Gi={_KITTY_ID},s=1,v=1,a=q,t=d,f=24;AAAA\x1b\\".encode()
_QUERY_CELL = b"\x1b[16t"
_QUERY_DA1 = b"\x1b[c"
_DA1 = re.compile(rb"\x1b\[\?([0-9;]*)c")
_KITTY_OK = re.compile(rb"\x1b_Gi=" + str(_KITTY_ID).encode() + rb"[^\x1b;]*;OK\x1b\\")
_CELL = re.compile(rb"\x1b\[6;(\d+);(\d+)t")


@dataclass(frozen=True)
class Graphics:
    """How sample grids are drawn."""

    mode: str = "halfblock"
    """``halfblock`` (two pixels per character cell), ``kitty`` or ``sixel``."""
    cell: tuple[int, int] = DEFAULT_CELL
    """A terminal cell in pixels, ``(width, height)``; pixel modes only."""
    reason: str = ""
    """Why this mode, for the help screen (``detected``, ``NO_COLOR``, ``TERM=xterm``...)."""
    window: bool = False
    """True when the cell size comes from the terminal window (re-read on resize: the user
    may change the font size)."""

    @property
    def pixels(self) -> bool:
        """True for the Kitty and Sixel modes."""
        return self.mode in PIXEL_MODES

    @property
    def label(self) -> str:
        """A few words for a border: ``kitty graphics``, ``sixel`` or ``half-block``."""
        return {"kitty": "kitty graphics", "sixel": "sixel"}.get(self.mode, "half-block")


HALFBLOCK = Graphics("halfblock", reason="default")


@dataclass(frozen=True)
class TerminalAnswer:
    """What the terminal said to :func:`query_terminal`."""

    answered: bool
    """The Device Attributes answer arrived (the terminal talks back at all)."""
    kitty: bool = False
    """It accepted the Kitty graphics query."""
    sixel: bool = False
    """Its Device Attributes list Sixel graphics (attribute 4)."""
    cell: tuple[int, int] | None = None
    """Its cell size in pixels, when it said."""


def parse_answer(data: bytes) -> TerminalAnswer:
    """Read the terminal's replies to :func:`query_terminal` out of ``data``."""
    da1 = _DA1.search(data)
    cell = _CELL.search(data)
    size = None
    if cell is not None:
        height, width = int(cell.group(1)), int(cell.group(2))
        size = (width, height) if width > 0 and height > 0 else None
    return TerminalAnswer(
        answered=da1 is not None,
        kitty=_KITTY_OK.search(data) is not None,
        sixel=da1 is not None and "4" in da1.group(1).decode().split(";"),
        cell=size)


def query_terminal(fd_in: int = 0, fd_out: int = 1, *, timeout: float = PROBE_TIMEOUT,
                   want_cell: bool = True) -> TerminalAnswer:
    """Ask the terminal on ``fd_out`` (answering on ``fd_in``) for Kitty graphics, Sixel and
    its cell size, in one round trip; stops reading at the Device Attributes answer.

    Must run before Textual starts reading the input. The terminal is put in cbreak mode
    (no echo) for the exchange and restored after, whatever happens.
    """
    import termios
    import tty

    saved = termios.tcgetattr(fd_in)
    data = b""
    try:
        tty.setcbreak(fd_in, termios.TCSANOW)
        os.write(fd_out, _QUERY_KITTY + (_QUERY_CELL if want_cell else b"") + _QUERY_DA1)
        deadline = time.monotonic() + timeout
        while _DA1.search(data) is None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd_in], [], [], left)[0]:
                break
            chunk = os.read(fd_in, 4096)
            if not chunk:
                break
            data += chunk
    finally:
        termios.tcsetattr(fd_in, termios.TCSANOW, saved)
    return parse_answer(data)


def window_cell(fd: int = 1) -> tuple[int, int] | None:
    """The cell size in pixels from the terminal window's size (``TIOCGWINSZ``), when the
    terminal fills in the pixel fields (many do, tmux only when its own terminal does)."""
    try:
        import fcntl
        import struct
        import termios

        rows, cols, width, height = struct.unpack(
            "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except (ImportError, OSError):
        return None
    if not (rows and cols and width and height):
        return None
    cell = (width // cols, height // rows)
    return cell if cell[0] > 0 and cell[1] > 0 else None


def _env_cell(env: Mapping[str, str]) -> tuple[int, int] | None:
    width, height = env.get("TEXTUAL_CELL_WIDTH", ""), env.get("TEXTUAL_CELL_HEIGHT", "")
    if width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0:
        return int(width), int(height)
    return None


def setting_problem(env: Mapping[str, str]) -> str:
    """What is wrong with ``GANTUI_GRAPHICS`` (then treated as ``auto``), or ``""``."""
    from gantui.text import safe

    raw = env.get(ENV_VAR, "")
    if (raw.strip().lower() or "auto") in CHOICES:
        return ""
    return f"{ENV_VAR}={safe(raw, 20)} is not one of {', '.join(CHOICES)}"


def choose(env: Mapping[str, str], *, terminal: bool,
           ask: Callable[[], TerminalAnswer]) -> tuple[str, str]:
    """The drawing mode and why, from the environment and, for ``auto`` in a terminal that
    may have pixels, the terminal's answer (``ask`` is called at most once, only then).

    Args:
        env: The environment (``GANTUI_GRAPHICS``, ``NO_COLOR``, ``TERM``...).
        terminal: stdin, stdout and stderr are the same terminal, so it can be asked.
        ask: Queries the terminal (:func:`query_terminal`).

    Returns:
        ``(mode, reason)``.
    """
    problem = setting_problem(env)
    note = f" ({problem})" if problem else ""
    wanted = "auto" if problem else env.get(ENV_VAR, "").strip().lower() or "auto"
    if "web_driver" in env.get("TEXTUAL_DRIVER", ""):
        return "halfblock", "in a browser"  # textual-serve's page draws text only
    if wanted != "auto":
        return wanted, f"{ENV_VAR}={wanted}"
    if env.get("NO_COLOR"):
        return "halfblock", "NO_COLOR" + note
    term = env.get("TERM", "")
    if term in PLAIN_TERMS:
        return "halfblock", f"TERM={term or '(unset)'}" + note
    if not terminal:
        return "halfblock", "no terminal to ask" + note
    answer = ask()
    if answer.sixel:  # first: WezTerm and Konsole also accept the Kitty query, but cannot
        return "sixel", "detected" + note  # show its Unicode placeholders; Kitty has no Sixel
    if answer.kitty and not _kitty_placeholders_broken(env):
        return "kitty", "detected" + note
    if not answer.answered:
        return "halfblock", "the terminal did not answer" + note
    return "halfblock", "no Kitty graphics or Sixel detected" + note


def _kitty_placeholders_broken(env: Mapping[str, str]) -> bool:
    """Terminals that accept the Kitty graphics query but draw its Unicode placeholders as
    text (textual-image's Kitty widget depends on them)."""
    return "KONSOLE_VERSION" in env or env.get("TERM_PROGRAM") == "WezTerm"


def _one_terminal() -> bool:
    """stdin, stdout and stderr are one terminal: we write the query to stdout, read the
    answer on stdin, and Textual draws on stderr."""
    try:
        stats = [os.fstat(fd) for fd in (0, 1, 2)]
        ttys = all(os.isatty(fd) for fd in (0, 1, 2))
    except OSError:
        return False
    return ttys and all(os.path.samestat(stats[0], s) for s in stats[1:])


def detect(env: Mapping[str, str] | None = None, *, headless: bool = False) -> Graphics:
    """Decide how this process draws sample grids (:func:`choose`), asking the terminal when
    that is needed. Call before Textual starts; ``headless`` (tests) never asks."""
    env = os.environ if env is None else env
    terminal = not headless and _one_terminal()
    cell = window_cell(1) if terminal else None
    answers: list[TerminalAnswer] = []

    def ask() -> TerminalAnswer:
        try:
            answers.append(query_terminal(0, 1, want_cell=cell is None))
        except (OSError, ImportError):  # termios.error is an OSError subclass
            answers.append(TerminalAnswer(answered=False))
        return answers[0]

    mode, reason = choose(env, terminal=terminal, ask=ask)
    if mode not in PIXEL_MODES:
        return Graphics("halfblock", reason=reason)
    asked = answers[0].cell if answers else None
    return Graphics(mode, cell or asked or _env_cell(env) or DEFAULT_CELL, reason,
                    window=cell is not None)


def activate(graphics: Graphics) -> Graphics:
    """Get a pixel mode ready (load textual-image); half blocks, saying why, when it cannot
    be loaded. Returns the mode in use."""
    if not graphics.pixels:
        return graphics
    try:
        load_textual_image(graphics.cell)
        import gantui.ui.picture  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - missing, or an incompatible version
        return Graphics("halfblock", reason=f"textual-image unavailable: {exc}")
    return graphics


class SettlesGraphics:
    """For a Textual app that draws sample grids: settles :attr:`graphics` as the app loads
    (``on_load``, before Textual reads the terminal's input, so the query's answer never
    becomes keys), from the mode asked for (``_graphics_wanted``) or :func:`detect`. Textual's
    test harness (``run_test``) has no terminal to ask, so ``auto`` draws half blocks there.
    Put it before ``App`` among the bases."""

    graphics: Graphics = HALFBLOCK
    """How sample grids are drawn, settled when the app loads."""
    _graphics_wanted: Graphics | None = None
    _headless = False

    def run_test(self, *args, **kwargs):  # noqa: ANN201 - Textual's context manager
        self._headless = True
        return super().run_test(*args, **kwargs)  # type: ignore[misc]

    def on_load(self) -> None:
        wanted = self._graphics_wanted or detect(headless=self._headless)
        self.graphics = activate(wanted)


def follow_window(graphics: Graphics) -> Graphics:
    """After a resize: the same mode with the window's cell size now (a font change)."""
    if not graphics.window:
        return graphics
    cell = window_cell(1)
    if cell is None or cell == graphics.cell:
        return graphics
    set_cell(cell)
    return Graphics(graphics.mode, cell, graphics.reason, window=True)


# ---- laying a grid out in cells ------------------------------------------------------------

@dataclass(frozen=True)
class PictureFit:
    """Where a grid goes in a panel, in real pixels."""

    shown: int
    """Samples per grid row shown: the whole grid's ``nrow``, or fewer (a top-left part)."""
    source: tuple[int, int]
    """``(height, width)`` of the grid's top-left part drawn, in grid pixels."""
    size: tuple[int, int]
    """``(height, width)`` it is drawn at on screen: a whole multiple of the grid's pixels
    when there is room (crisp), else shrunk with an area average."""
    cells: tuple[int, int]
    """``(columns, rows)`` of terminal cells the picture takes."""


def _scale(src_h: int, src_w: int, width_px: int, height_px: int) -> float:
    scale = min(width_px / src_w, height_px / src_h)
    return float(math.floor(scale)) if scale >= 1 else scale


def subgrid_size(height: int, width: int, nrow: int, k: int) -> tuple[int, int]:
    """Pixel ``(height, width)`` of the top-left ``k`` x ``k`` samples of a grid with ``nrow``
    (square) samples per row."""
    cell = width / max(1, nrow)  # samples are square: a grid row is as tall as one is wide
    grid_rows = max(1, round(height / cell))
    return round(min(k, grid_rows) * cell), round(k * cell)


def largest_subgrid(height: int, width: int, nrow: int,
                    big_enough: Callable[[int, int, int], bool]) -> int:
    """The most samples per row, ``nrow`` down to 1, whose top-left sub-grid is drawn
    ``big_enough(k, sub_height, sub_width)``."""
    k = max(1, nrow)
    while k > 1 and not big_enough(k, *subgrid_size(height, width, nrow, k)):
        k -= 1
    return k


def fit_picture(src_h: int, src_w: int, nrow: int, cols: int, rows: int,
                cell: tuple[int, int], *, crop: bool = True) -> PictureFit | None:
    """Fit a grid with ``nrow`` samples per row into ``cols`` x ``rows`` cells of ``cell``
    pixels; with ``crop``, a top-left sub-grid when the whole one would draw samples smaller
    than :data:`MIN_PICTURE_SAMPLE_PX`. None when there is no room at all."""
    width_px, height_px = cols * cell[0], rows * cell[1]
    if width_px <= 0 or height_px <= 0 or src_h <= 0 or src_w <= 0:
        return None
    nrow = max(1, nrow)
    step = src_w / nrow
    k = largest_subgrid(src_h, src_w, nrow, lambda _k, h, w: _scale(
        h, w, width_px, height_px) * step >= MIN_PICTURE_SAMPLE_PX) if crop else nrow
    h, w = subgrid_size(src_h, src_w, nrow, k) if k < nrow else (src_h, src_w)
    scale = _scale(h, w, width_px, height_px)
    out_h = max(1, min(height_px, round(h * scale)))
    out_w = max(1, min(width_px, round(w * scale)))
    return PictureFit(k, (h, w), (out_h, out_w),
                      (math.ceil(out_w / cell[0]), math.ceil(out_h / cell[1])))


def make_picture(pixels: np.ndarray, fit: PictureFit, cell: tuple[int, int]):
    """The grid (``(H, W, C)`` uint8) as a PIL image filling ``fit.cells`` exactly: the
    grid's top-left part drawn at ``fit.size``, top-left, the rest transparent (so
    textual-image never resamples it, and the panel's colour shows around it)."""
    from PIL import Image

    h, w = fit.source
    part = pixels[:h, :w]
    grey = part.shape[2] == 1
    out_h, out_w = fit.size
    if out_h % h == 0 and out_w % w == 0 and out_h // h == out_w // w:
        k = out_h // h
        scaled = np.repeat(np.repeat(part, k, axis=0), k, axis=1) if k > 1 else part
        picture = Image.fromarray(scaled[:, :, 0] if grey else scaled[:, :, :3])
    else:
        picture = Image.fromarray(part[:, :, 0] if grey else part[:, :, :3])
        picture = picture.resize((out_w, out_h), Image.Resampling.BOX)
    mode = "LA" if grey else "RGBA"
    canvas = Image.new(mode, (fit.cells[0] * cell[0], fit.cells[1] * cell[1]))
    canvas.paste(picture.convert(mode), (0, 0))
    return canvas
