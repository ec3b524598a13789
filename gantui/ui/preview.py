"""The sample preview: image grids at their real resolution (Kitty graphics or Sixel) or as
half-block characters, ring8 point clouds as a scatter.

In half-block mode each terminal cell shows two vertically stacked pixels: ``▀`` painted with
the top pixel as foreground and the bottom pixel as background. Colours are plain RGB; Rich
maps them to the nearest 256 or 16 colour when the terminal has no truecolor. Which mode is
used is decided once per dashboard (:mod:`gantui.ui.graphics`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import plotext
from rich.color import Color
from rich.console import Console, ConsoleOptions, RenderResult
from rich.segment import Segment
from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.timer import Timer
from textual.widget import Widget

from gantui.events import Points, Preview
from gantui.ui.graphics import (
    HALFBLOCK,
    Graphics,
    PictureFit,
    fit_picture,
    largest_subgrid,
    make_picture,
    subgrid_size,
)
from gantui.ui.imageload import current_cell

SCATTER_POINTS = 256
"""Most generated points drawn in the ring8 scatter (plotext's cost grows per point)."""

RESIZE_SETTLE_S = 0.1
"""Pixel modes: seconds a panel's size must hold before its picture is made again."""

MIN_SAMPLE_PX = 8
"""Smallest on-screen size (in pixels, i.e. cells wide / half-cells high) a sample may shrink
to before the preview shows a top-left sub-grid instead of the whole grid."""


def preview_array(preview: Preview) -> np.ndarray:
    """The preview's pixels as a ``(height, width, channels)`` uint8 array."""
    flat = np.frombuffer(preview.pixels, dtype=np.uint8)
    return flat.reshape(preview.height, preview.width, preview.channels)


def resample(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(H, W, C)`` to ``(height, width, C)``: area average when shrinking, nearest
    neighbour when growing."""
    out = image.astype(np.float32)
    for axis, target in ((0, height), (1, width)):
        size = out.shape[axis]
        if target == size:
            continue
        if target < size:
            edges = np.linspace(0, size, target + 1).astype(np.int64)
            sums = np.add.reduceat(out, edges[:-1], axis=axis)
            counts = np.diff(edges).astype(np.float32)
            shape = [1, 1, 1]
            shape[axis] = target
            out = sums / counts.reshape(shape)
        else:
            idx = ((np.arange(target) + 0.5) * size / target).astype(np.int64)
            out = np.take(out, idx, axis=axis)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def fit(src_h: int, src_w: int, cols: int, rows: int) -> tuple[int, int]:
    """Largest ``(pixel_height, pixel_width)`` with the source's aspect ratio that fits in
    ``cols`` x ``rows`` cells (two pixels per cell vertically); the height is kept even."""
    if cols <= 0 or rows <= 0 or src_h <= 0 or src_w <= 0:
        return 0, 0
    scale = min(cols / src_w, 2 * rows / src_h)
    width = max(1, min(cols, round(src_w * scale)))
    height = max(2, min(2 * rows, round(src_h * scale)))
    return height - height % 2, width


def samples_shown(height: int, width: int, nrow: int, cols: int, rows: int) -> int:
    """How many samples per grid row to show so that none is drawn smaller than
    :data:`MIN_SAMPLE_PX`: ``nrow`` (the whole grid) or fewer (a top-left sub-grid)."""
    return largest_subgrid(height, width, nrow,
                           lambda k, h, w: fit(h, w, cols, rows)[1] / k >= MIN_SAMPLE_PX)


def subgrid_shown(height: int, width: int, nrow: int, cols: int, rows: int
                  ) -> tuple[int, int]:
    """Samples per row and rows of samples to show in ``cols`` x ``rows`` half-block cells:
    the whole grid when every sample gets at least :data:`MIN_SAMPLE_PX`, otherwise as many
    as fit at that size across and down (a wide panel shows more columns than rows)."""
    nrow = max(1, nrow)
    side = width / nrow  # samples are square
    grid_rows = max(1, round(height / side))
    if samples_shown(height, width, nrow, cols, rows) >= nrow:
        return nrow, grid_rows
    across = max(1, min(nrow, cols // MIN_SAMPLE_PX))
    down = max(1, min(grid_rows, (2 * rows) // MIN_SAMPLE_PX))
    return across, down


def crop_grid(image: np.ndarray, nrow: int, k: int, down: int | None = None) -> np.ndarray:
    """The top-left ``k`` x ``k`` samples of a grid with ``nrow`` samples per row (``k``
    across and ``down`` rows when given)."""
    if down is None:
        if k >= nrow:
            return image
        h, w = subgrid_size(image.shape[0], image.shape[1], nrow, k)
        return image[:h, :w]
    side = image.shape[1] / max(1, nrow)
    return image[:max(1, round(down * side)), :max(1, round(k * side))]


class HalfBlockImage:
    """A Rich renderable drawing a ``(H, W, C)`` uint8 image (H even) with ``▀`` cells."""

    def __init__(self, image: np.ndarray) -> None:
        if image.ndim == 2:
            image = image[:, :, None]
        if image.shape[0] % 2:
            image = np.concatenate([image, image[-1:]], axis=0)
        self.image = image

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        for row in self.rows():
            yield from row
            yield Segment.line()

    def rows(self) -> list[list[Segment]]:
        """One list of segments per terminal row."""
        img = self.image
        if img.shape[2] == 1:
            img = np.repeat(img, 3, axis=2)
        img = img[:, :, :3]
        cache: dict[tuple, Style] = {}
        out = []
        for y in range(0, img.shape[0], 2):
            top, bottom = img[y].tolist(), img[y + 1].tolist()
            segments = []
            for t, b in zip(top, bottom, strict=True):
                key = (*t, *b)
                style = cache.get(key)
                if style is None:
                    style = Style(color=Color.from_rgb(*t), bgcolor=Color.from_rgb(*b))
                    cache[key] = style
                segments.append(Segment("▀", style))
            out.append(segments)
        return out


def render_preview(preview: Preview, cols: int, rows: int) -> tuple[HalfBlockImage | None, int]:
    """Fit a preview grid into ``cols`` x ``rows`` cells; return the image and samples per
    row shown (``nrow`` when the whole grid fits): as much of the grid as fits with no
    sample below :data:`MIN_SAMPLE_PX` (:func:`subgrid_shown`)."""
    shown, down = subgrid_shown(preview.height, preview.width, preview.nrow, cols, rows)
    image = crop_grid(preview_array(preview), preview.nrow, shown, down)
    height, width = fit(image.shape[0], image.shape[1], cols, rows)
    if height == 0 or width == 0:
        return None, shown
    return HalfBlockImage(resample(image, height, width)), shown


def scatter_text(points: Points, cols: int, rows: int) -> Text:
    """Generated points and the true modes as a plotext scatter of ``cols`` x ``rows``."""
    plotext.terminal.limit(False, False)  # we size plots to widgets, not to the terminal
    fig = plotext.figure
    fig.clear()
    fig.plot_size(cols, rows)
    fig.theme("simple")
    if points.points:
        xs, ys = zip(*points.points[:SCATTER_POINTS], strict=True)
        fake = fig.signal(list(xs), list(ys),
                          marker=plotext.marker("braille", plotext.pixel(foreground=39)))
        fig.draw(fake)
    if points.modes:
        mx, my = zip(*points.modes, strict=True)
        modes = fig.signal(list(mx), list(my),
                           marker=plotext.marker("x", plotext.pixel(foreground=196)))
        fig.draw(modes)
    fig.legend(False)  # the panel title explains the markers
    extent = max([3.0, *(abs(v) + 1.0 for mode in points.modes for v in mode)])
    fig.ruler("x").lim(-extent, extent)  # the ring's 3; the 5x5 grid's 5
    fig.ruler("y").lim(-extent, extent)
    return Text.from_ansi(fig.build().string(), no_wrap=True, end="")


def _same_pixels(a: Preview, b: Preview) -> bool:
    return (a.height, a.width, a.channels, a.nrow) == (b.height, b.width, b.channels, b.nrow) \
        and a.pixels == b.pixels


class PictureSlot:
    """A panel's pixel picture: textual-image's widget and the grid it holds, made again (and
    so re-encoded for the terminal) only when the grid's pixels, the size it is drawn at or
    the cell size change, never on a mere refresh."""

    def __init__(self, mode: str, on_encoded: Callable[[float], None] | None = None) -> None:
        from gantui.ui.picture import picture_widget

        self.widget = picture_widget(mode, on_encoded=on_encoded)
        self.widget.display = False
        self.fit: PictureFit | None = None
        self.builds = 0
        """Pictures made so far (each is encoded once by the widget)."""
        self.build_s = 0.0
        """CPU seconds the last picture took to make."""
        self._key: tuple | None = None

    def show(self, image: Preview | Points | None, cols: int, rows: int, *,
             crop: bool = True) -> PictureFit | None:
        """Show ``image`` (a grid; anything else hides the picture) in ``cols`` x ``rows``
        cells; returns where it went, None when it is hidden."""
        if not isinstance(image, Preview):
            self._key = self.fit = None
            self.widget.display = False
            return None
        cell = current_cell()
        fit = fit_picture(image.height, image.width, image.nrow, cols, rows, cell, crop=crop)
        if fit is None:
            self._key = self.fit = None
            self.widget.display = False
            return None
        key = (image.pixels, image.height, image.width, image.channels, image.nrow, fit, cell)
        if key == self._key:
            return fit
        self._key, self.fit = key, fit
        start = time.thread_time()
        picture = make_picture(preview_array(image), fit, cell)
        self.build_s = time.thread_time() - start
        self.builds += 1
        self.widget.styles.width, self.widget.styles.height = fit.cells
        self.widget.image = picture
        self.widget.display = True
        return fit


class PreviewPanel(Widget):
    """The latest preview grid (pixels or half blocks) or ring8 scatter, fitted to the widget.

    Its border title says which step is shown and what was cropped; its subtitle how the grid
    is drawn. With pixels, a grid that arrives sooner after the last than that one's encoding
    cost allows (``budget`` of a core, like the dashboard's redraws) waits, the newest kept,
    so even a slow Sixel encoder never takes more than its share from the trainer.
    """

    def __init__(self, *, graphics: Graphics = HALFBLOCK, budget: float = 0.03,
                 id: str | None = None, classes: str | None = None) -> None:
        super().__init__(id=id, classes=classes)
        self.graphics = graphics
        self.budget = budget
        self.image: Preview | Points | None = None
        self._key: tuple | None = None
        self._rendered: object = Text()
        self.slot = PictureSlot(graphics.mode, self._encoded) if graphics.pixels else None
        """The pixel picture; None in half-block mode."""
        self.waiting: Preview | None = None
        """A grid held back by the pacing, shown when its turn comes."""
        self._next_picture = 0.0  # monotonic time before which a new grid waits
        self._pacer: Timer | None = None
        self._resizer: Timer | None = None

    def compose(self) -> ComposeResult:
        if self.slot is not None:
            yield self.slot.widget

    def show(self, image: Preview | Points | None) -> None:
        """Display a new preview or point cloud."""
        if image is self.image or (image is self.waiting and image is not None):
            return
        if self._must_wait(image):
            return
        self.waiting = None
        self.image = image
        self.border_title = self.caption()
        self.refresh()
        self._show_picture()

    def _must_wait(self, image: Preview | Points | None) -> bool:
        """Pixels only: hold ``image`` back until the last grid's encoding cost is repaid
        (not when it has the same pixels: nothing would be encoded)."""
        shown = self.image
        if self.slot is None or not isinstance(image, Preview) \
                or not isinstance(shown, Preview) or _same_pixels(image, shown):
            return False
        wait = self._next_picture - time.monotonic()
        if wait <= 0:
            return False
        self.waiting = image
        if self._pacer is None:
            self._pacer = self.set_timer(wait, self._show_waiting)
        return True

    def _show_waiting(self) -> None:
        self._pacer = None
        image, self.waiting = self.waiting, None
        if image is not None:
            self.show(image)

    def _encoded(self, seconds: float) -> None:
        """The picture widget encoded an image in ``seconds`` of CPU."""
        cost = seconds + self.slot.build_s
        self._next_picture = time.monotonic() + cost / self.budget

    def _show_picture(self) -> None:
        if self.slot is not None:
            size = self.content_size
            self.slot.show(self.image, size.width, size.height)

    def on_resize(self) -> None:
        self.border_title = self.caption()
        if self.slot is not None:  # once the size settles: a drag sends many
            if self._resizer is not None:
                self._resizer.stop()
            self._resizer = self.set_timer(RESIZE_SETTLE_S, self._show_picture)

    def caption(self) -> str:
        """One line describing what is on screen."""
        image = self.image
        if isinstance(image, Preview):
            size = self.content_size
            if self.slot is not None:
                fit = fit_picture(image.height, image.width, image.nrow, size.width,
                                  size.height, current_cell())
                k = fit.shown if fit is not None else image.nrow
                part = "" if k >= image.nrow else f" · top-left {k}×{k}"
            else:
                k, down = subgrid_shown(image.height, image.width, image.nrow, size.width,
                                        size.height)
                whole = (k, down) == (image.nrow, max(1, round(image.height * image.nrow
                                                                / image.width)))
                part = "" if whole else f" · top-left {k}×{down}"
            shown = ("" if np.isnan(image.diversity)  # a grid read back from samples/
                     else f" · diversity {image.diversity:.3f}")
            return f"samples · step {image.step}{shown}{part}"
        if isinstance(image, Points):
            return (f"G(z) vs modes (x) · step {image.step} · covered {image.modes_covered}/"
                    f"{len(image.modes)} · HQ {image.high_quality:.0%}")
        return "samples"

    def render(self) -> object:
        size = self.content_size
        key = (id(self.image), size.width, size.height)
        if key == self._key:
            return self._rendered
        self._key = key
        image = self.image
        if image is None:
            self._rendered = Text("waiting for the first preview…", style="dim")
        elif isinstance(image, Points):
            self._rendered = scatter_text(image, size.width, size.height)
        elif self.slot is not None:
            self._rendered = Text("")  # the picture widget draws the grid
        else:
            rendered, _ = render_preview(image, size.width, size.height)
            self._rendered = rendered if rendered is not None else Text("")
        return self._rendered


def save_png(preview: Preview, folder: Path) -> Path:
    """Write the preview grid at its full stored resolution as a PNG in ``folder``.

    Never overwrites: a second save of the same step gets a numbered name.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"preview-step{preview.step:07d}.png"
    n = 1
    while path.exists():
        path = folder / f"preview-step{preview.step:07d}-{n}.png"
        n += 1
    pixels = preview_array(preview)
    Image.fromarray(pixels[:, :, 0] if preview.channels == 1 else pixels).save(path)
    return path
