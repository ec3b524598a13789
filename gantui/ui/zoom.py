"""The zoom view: the sample grid full-screen, and the run's earlier grids a key away."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from rich.console import Group
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Footer, Static

from gantui.events import Points, Preview
from gantui.quality.describe import STRIP_COLUMNS, STRIP_NAME
from gantui.run.follow import decode_preview, sample_files
from gantui.ui.graphics import HALFBLOCK, Graphics, PictureFit
from gantui.ui.imageload import current_cell
from gantui.ui.preview import (
    HalfBlockImage,
    PictureSlot,
    fit,
    preview_array,
    resample,
    scatter_text,
)

ZOOM_MAX_SIDE = 2048
"""Longest side a stored grid is decoded at for the zoom view."""


class ZoomImage(Widget):
    """A grid drawn as large as the widget allows, whole (never cropped), with the class of
    each row to its left when ``labels`` are given; in pixels when ``graphics`` has them."""

    def __init__(self, *, graphics: Graphics = HALFBLOCK, id: str | None = None) -> None:
        super().__init__(id=id)
        self.image: Preview | Points | None = None
        self.labels: list[str] = []
        self.grid_rows = 0
        self.slot = PictureSlot(graphics.mode) if graphics.pixels else None
        """The pixel picture; None in half-block mode."""

    def compose(self) -> ComposeResult:
        if self.slot is not None:
            yield self.slot.widget

    def show(self, image: Preview | Points | None, labels: list[str], grid_rows: int) -> None:
        self.image, self.labels, self.grid_rows = image, labels, grid_rows
        self.refresh()
        self._show_picture()

    def on_resize(self) -> None:
        self._show_picture()

    def _gutter(self) -> int:
        """Room for the longest label (class names up to 12 characters) and a space."""
        return min(LABEL_MAX, max(2, *map(len, self.labels))) + 1 if self.labels else 0

    def _show_picture(self) -> None:
        if self.slot is None:
            return
        gutter = self._gutter()
        self.slot.widget.styles.margin = (0, 0, 0, gutter)
        size = self.content_size
        self.slot.show(self.image, size.width - gutter, size.height, crop=False)
        self.refresh()  # the labels follow the picture's rows

    def render(self) -> object:
        size = self.content_size
        image = self.image
        if image is None:
            return Text("no grid yet", style="dim")
        if isinstance(image, Points):
            return scatter_text(image, size.width, size.height)
        gutter = self._gutter()
        if self.slot is not None:
            placed = self.slot.fit
            if placed is None:  # not laid out yet, or no room
                return Text("the terminal is too small" if size.area else "", style="dim")
            return _picture_labels(placed, self.labels, self.grid_rows, gutter)
        pixels = preview_array(image)
        height, width = fit(pixels.shape[0], pixels.shape[1], size.width - gutter, size.height)
        if height == 0 or width == 0:
            return Text("the terminal is too small", style="dim")
        drawn = HalfBlockImage(resample(pixels, height, width))
        if not self.labels:
            return drawn
        return _labelled(drawn, self.labels, self.grid_rows, gutter)


LABEL_MAX = 12
"""Longest class label shown beside a zoomed grid (longer names are cut)."""


def _short(label: str) -> str:
    return label if len(label) <= LABEL_MAX else label[:LABEL_MAX - 1] + "…"


def _picture_labels(placed: PictureFit, labels: list[str], grid_rows: int, gutter: int) -> Text:
    """The gutter beside a pixel picture: each grid row's label on the terminal row that
    holds the middle of that grid row."""
    row_px = placed.size[0] / max(1, grid_rows)
    cell_h = current_cell()[1]
    marks = {int((k + 0.5) * row_px // cell_h): _short(label)
             for k, label in enumerate(labels[:grid_rows])}
    lines = [f"{marks.get(i, ''):>{gutter - 1}} " if gutter else "" for i in range(placed.cells[1])]
    return Text("\n".join(lines), style="bold", no_wrap=True, end="")


def _labelled(drawn: HalfBlockImage, labels: list[str], grid_rows: int, gutter: int) -> Group:
    """Each terminal row of ``drawn`` with the label of the grid row at its middle."""
    rows = drawn.rows()
    per_row = len(rows) / max(1, grid_rows)
    marks = {int((k + 0.5) * per_row): _short(label)
             for k, label in enumerate(labels[:grid_rows])}
    lines = []
    for i, segments in enumerate(rows):
        line = Text(f"{marks.get(i, ''):>{gutter - 1}} ", style="bold")
        for segment in segments:
            line.append(segment.text, segment.style)
        lines.append(line)
    return Group(*lines)


class ZoomScreen(ModalScreen[None]):
    """The current grid full-screen; left/right step through the grids in ``samples/``."""

    BINDINGS: ClassVar = [
        Binding("left,left_square_bracket", "older", "Earlier grid"),
        Binding("right,right_square_bracket", "newer", "Later grid"),
        Binding("end", "newest", "Newest"),
        Binding("c", "copies", "Near-copies"),
        Binding("escape,f,q", "close", "Back"),
    ]

    DEFAULT_CSS = """
    ZoomScreen { background: $background; }
    ZoomScreen #zoom-title { height: 1; background: $panel; text-style: bold; }
    ZoomScreen #zoom-image { height: 1fr; }
    """

    def __init__(self, current: Preview | Points | None, run_dir: str, *, conditional: bool,
                 n_classes: int, quality: str = "", class_names: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.class_names = class_names
        """The run's class names (labelled folders, CIFAR-10...); empty shows numbers."""
        self.current = current
        self.run_dir = run_dir
        self.conditional = conditional
        self.n_classes = n_classes
        self.quality = quality
        self.files = sample_files(Path(run_dir)) if run_dir else []
        self.index = len(self.files)  # len(files): the live grid; 0.. a stored one
        self.shown: Preview | Points | None = current
        self.copies = False
        """Showing the near-copies strip (``samples/near-copies.png``) instead of a grid."""

    def compose(self) -> ComposeResult:
        self.title_bar = Static(id="zoom-title")
        self.picture = ZoomImage(graphics=getattr(self.app, "graphics", HALFBLOCK),
                                 id="zoom-image")
        yield self.title_bar
        yield self.picture
        yield Footer()

    def on_mount(self) -> None:
        self._show()

    def _show(self) -> None:
        if self.copies:
            self._show_copies()
            return
        if self.index >= len(self.files):
            image, where = self.current, "newest"
        else:
            step, path = self.files[self.index]
            nrow = self.current.nrow if isinstance(self.current, Preview) else 1
            image = decode_preview(path, step, nrow, ZOOM_MAX_SIDE)
            where = f"{self.index + 1} of {len(self.files)} stored"
        self.shown = image
        labels, grid_rows = self._labels(image)
        self.picture.show(image, labels, grid_rows)
        self.title_bar.update(Text(self._title(image, where), no_wrap=True, overflow="ellipsis"))

    def _labels(self, image: Preview | Points | None) -> tuple[list[str], int]:
        if not (self.conditional and isinstance(image, Preview)):
            return [], 0
        cell = image.width / max(1, image.nrow)
        grid_rows = max(1, round(image.height / cell))
        names = self.class_names if len(self.class_names) == self.n_classes else ()
        return [names[k] if names else str(k)
                for k in range(min(self.n_classes, grid_rows))], grid_rows

    def _title(self, image: Preview | Points | None, where: str) -> str:
        if image is None:
            return f" samples · {where} · unreadable file"
        parts = [f" samples · step {image.step}"]
        if isinstance(image, Points):
            parts.append(f"covered {image.modes_covered}/{len(image.modes)} · HQ "
                         f"{image.high_quality:.0%}")
        elif not np.isnan(image.diversity):
            parts.append(f"diversity {image.diversity:.3f}")
        if self.quality and where == "newest":
            parts.append(self.quality)
        if self.conditional:
            parts.append("a row per class")
        parts.append(where)
        if self.files:
            parts.append("←/→ earlier/later, esc back")
        return " · ".join(parts)

    def _show_copies(self) -> None:
        """The latest evaluation's worst near-copies over their nearest training images."""
        path = Path(self.run_dir) / "samples" / STRIP_NAME if self.run_dir else None
        image = decode_preview(path, 0, STRIP_COLUMNS, ZOOM_MAX_SIDE) if (
            path is not None and path.is_file()) else None
        self.shown = image
        self.picture.show(image, [], 0)
        title = (" near-copies · top: the samples closest to a training image · bottom: that "
                 "training image · c: back to the samples") if image is not None else (
                 " near-copies · none yet (MNIST runs write them at each evaluation) · c: back")
        self.title_bar.update(Text(title, no_wrap=True, overflow="ellipsis"))

    def action_copies(self) -> None:
        """Between the samples and the near-copies strip."""
        self.copies = not self.copies
        self._show()

    def action_older(self) -> None:
        self.copies = False
        if self.files and self.index > 0:
            self.index -= 1
            self._show()

    def action_newer(self) -> None:
        self.copies = False
        if self.index < len(self.files):
            self.index += 1
            self._show()

    def action_newest(self) -> None:
        self.copies = False
        self.index = len(self.files)
        self._show()

    def action_close(self) -> None:
        self.dismiss(None)
