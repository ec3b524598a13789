"""The pixel pictures: textual-image's Kitty and Sixel widgets, each encoding an image once.

Imported only in a pixel mode (:func:`gantui.ui.graphics.activate`), after textual-image has
been loaded without its import-time terminal queries. Each widget counts its encodes and
reports the CPU time of each to ``on_encoded``, so the preview can pace itself.

textual-image's Kitty widget makes a new renderable, and so transmits the image to the
terminal again, every time Textual re-renders it; :class:`KittyPicture` keeps the one it has
until the image or its size changes. Its Sixel widget already caches the encoded data.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from textual.app import ComposeResult

from gantui.ui.imageload import current_cell, load_textual_image

load_textual_image(current_cell())  # before the imports below: they would ask the terminal

from textual_image.renderable.tgp import Image as TGPRenderable  # noqa: E402
from textual_image.widget import SixelImage, TGPImage  # noqa: E402
from textual_image.widget.sixel import _ImageSixelImpl, _NoopRenderable  # noqa: E402

Encoded = Callable[[float], None]
"""Called with the CPU seconds an encode took."""


class _Counted:
    """Encode bookkeeping shared by both widgets."""

    encodes: int = 0
    """Images encoded for the terminal so far."""
    on_encoded: Encoded | None = None

    def _encoded(self, seconds: float) -> None:
        self.encodes += 1
        if self.on_encoded is not None:
            self.on_encoded(seconds)


class _Transmitting:
    """Wraps textual-image's Kitty renderable to time the one render that transmits."""

    def __init__(self, picture: KittyPicture, renderable) -> None:  # noqa: ANN001
        self.picture = picture
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        fresh = self.renderable.terminal_image_id is None
        start = time.thread_time()
        segments = list(self.renderable.__rich_console__(console, options))
        if fresh and self.renderable.terminal_image_id is not None:
            self.picture._encoded(time.thread_time() - start)
        yield from segments

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return self.renderable.__rich_measure__(console, options)


class KittyPicture(_Counted, TGPImage, Renderable=TGPRenderable):
    """An image through the Kitty graphics protocol (Unicode placeholders), sent to the
    terminal once per image and size."""

    def __init__(self, *, on_encoded: Encoded | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.on_encoded = on_encoded
        self._render_key: tuple | None = None
        self._wrapped: _Transmitting | None = None

    def render(self):  # noqa: ANN201 - a Rich renderable
        if not self.image:
            return ""
        key = (self.content_size, current_cell())
        if self._renderable is None or self._wrapped is None or key != self._render_key:
            self._render_key = key
            renderable = super().render()  # deletes the old image from the terminal
            self._wrapped = _Transmitting(self, renderable)
        return self._wrapped

    def on_unmount(self) -> None:
        if self._renderable is not None:
            self._renderable.cleanup()  # free the terminal's copy
            self._renderable = None


class _TimedSixels(_ImageSixelImpl):
    """textual-image's Sixel drawing, timing each encode for its :class:`SixelPicture`."""

    DEFAULT_CSS = "_TimedSixels { width: 100%; height: 100%; }"

    def _image_to_sixels(self, image, sixel_options=None, background=None) -> str:  # noqa: ANN001
        start = time.thread_time()
        data = super()._image_to_sixels(image, sixel_options, background)
        if isinstance(self.parent, SixelPicture):
            self.parent._encoded(time.thread_time() - start)
        return data


class SixelPicture(_Counted, SixelImage, Renderable=_NoopRenderable):
    """An image as Sixel graphics, encoded once per image, size and crop."""

    def __init__(self, *, on_encoded: Encoded | None = None, id: str | None = None) -> None:
        super().__init__(id=id)
        self.on_encoded = on_encoded

    def compose(self) -> ComposeResult:
        yield _TimedSixels(self.image, self._sixel_options)


def picture_widget(mode: str, *, on_encoded: Encoded | None = None,
                   id: str | None = None) -> KittyPicture | SixelPicture:
    """An empty picture widget for ``mode`` (``kitty`` or ``sixel``)."""
    cls = KittyPicture if mode == "kitty" else SixelPicture
    return cls(on_encoded=on_encoded, id=id)
