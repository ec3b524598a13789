"""Sample grids in real pixels: the mode decision, the terminal query over a real pty, and the
real dashboard drawing Preview events through textual-image's Kitty and Sixel widgets (with
half blocks as the fallback). Nothing here talks to the terminal running the tests."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import os
import re
import select
import termios
import threading
import time

import numpy as np
import pytest
from PIL import Image
from textual.geometry import Region

from gantui import events as ev
from gantui.ui import GantuiApp, graphics
from gantui.ui import app as app_mod
from gantui.ui.graphics import Graphics, TerminalAnswer, choose, fit_picture, query_terminal
from gantui.ui.preview import HalfBlockImage, preview_array
from gantui.ui.zoom import ZoomScreen

from .conftest import tiny, until

CELL = (10, 20)
EVERYTHING = TerminalAnswer(answered=True, kitty=True, sixel=True, cell=(9, 18))


def grid(channels: int = 1, step: int = 3, nrow: int = 8, sample: int = 28,
         seed: int = 0) -> ev.Preview:
    side = nrow * (sample + 2) + 2
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (side, side, channels), np.uint8)
    return ev.Preview(step, pixels.tobytes(), side, side, channels, nrow, 0.25)


class Feed:
    """A dashboard ``drain`` the test keeps feeding."""

    def __init__(self, *events: ev.Event) -> None:
        self.queue = list(events)

    def __call__(self) -> list[ev.Event]:
        out, self.queue = self.queue, []
        return out


@pytest.fixture
def fast_views(monkeypatch):
    """Redraw as often as asked: the CPU budget is the subject of one test only."""
    monkeypatch.setattr(app_mod, "UI_CPU_BUDGET", 1.0)


@pytest.fixture
def kitty_wire(monkeypatch):
    """What textual-image would write to the terminal for Kitty, collected instead."""
    import textual_image.renderable.tgp as tgp

    sent: list[tuple[dict, str | None]] = []
    monkeypatch.setattr(tgp, "_send_tgp_message",
                        lambda *, payload=None, **keys: sent.append((keys, payload)))
    return sent


def transmitted(sent: list[tuple[dict, str | None]]) -> list[np.ndarray]:
    """The images sent with the Kitty protocol (chunked base64 PNG), decoded, in order."""
    images, chunks = [], ""
    for keys, payload in sent:
        if keys.get("f") != 100:
            continue
        chunks += payload or ""
        if keys.get("m") == 0:
            with Image.open(io.BytesIO(base64.b64decode(chunks))) as png:
                images.append(np.asarray(png.convert("LA")))
            chunks = ""
    return images


def assert_shows(picture: np.ndarray, preview: ev.Preview) -> int:
    """``picture`` (grey + alpha) holds the preview's pixels, each a k x k block, top-left,
    and is transparent elsewhere; returns k."""
    pixels = preview_array(preview)[:, :, 0]
    h, w = pixels.shape
    k = min(picture.shape[0] // h, picture.shape[1] // w)
    assert k >= 1
    block = np.kron(pixels, np.ones((k, k), np.uint8))
    assert np.array_equal(picture[:h * k, :w * k, 0], block)
    assert (picture[:h * k, :w * k, 1] == 255).all()
    rest = picture[..., 1].copy()
    rest[:h * k, :w * k] = 0
    assert not rest.any()
    return k


def decode_sixel(data: str) -> np.ndarray:
    """A Sixel image (DCS ... ST, as textual-image writes it) back to RGB pixels."""
    body = data[data.index("q", data.index("\x1bP")) + 1:data.index("\x1b\\")]
    raster = re.match(r'"\d+;\d+;(\d+);(\d+)', body)
    width, height = int(raster[1]), int(raster[2])
    out = np.zeros((height, width, 3), np.uint8)
    palette: dict[int, tuple[int, int, int]] = {}
    colour, x, y = 0, 0, 0
    for token in re.finditer(r"#(\d+)(?:;2;(\d+);(\d+);(\d+))?|!(\d+)([?-~])|([?-~])|([$-])",
                             body[raster.end():]):
        if token[1] is not None:
            colour = int(token[1])
            if token[2] is not None:
                palette[colour] = tuple(round(int(v) * 255 / 100) for v in token.group(2, 3, 4))
        elif token[8] is not None:
            x, y = 0, y + (6 if token[8] == "-" else 0)
        else:
            count, char = (int(token[5]), token[6]) if token[5] else (1, token[7])
            bits = ord(char) - 63
            for row in range(6):
                if bits >> row & 1 and y + row < height:
                    out[y + row, x:x + count] = palette[colour]
            x += count
    return out


def make_app(feed: Feed, mode: str | None, **kwargs) -> GantuiApp:
    chosen = Graphics(mode, CELL, "test") if mode else None
    return GantuiApp(feed, None, graphics=chosen, plot_hz=20.0, **kwargs)


# ---- the decision ----------------------------------------------------------------------------

def asked_never() -> TerminalAnswer:
    raise AssertionError("the terminal must not be asked")


@pytest.mark.parametrize(("env", "mode", "reason"), [
    ({"TERM": "xterm"}, "halfblock", "TERM=xterm"),
    ({"TERM": "xterm-256color", "NO_COLOR": "1"}, "halfblock", "NO_COLOR"),
    ({"TERM": "xterm-kitty", "GANTUI_GRAPHICS": "halfblock"}, "halfblock",
     "GANTUI_GRAPHICS=halfblock"),
    ({"TERM": "xterm", "GANTUI_GRAPHICS": "Kitty"}, "kitty", "GANTUI_GRAPHICS=kitty"),
    ({"TERM": "dumb", "GANTUI_GRAPHICS": "sixel"}, "sixel", "GANTUI_GRAPHICS=sixel"),
    ({"GANTUI_GRAPHICS": "kitty", "TEXTUAL_DRIVER": "textual.drivers.web_driver:WebDriver"},
     "halfblock", "in a browser"),
])
def test_the_environment_decides_without_asking(env, mode, reason) -> None:
    assert choose(env, terminal=True, ask=asked_never) == (mode, reason)


def test_auto_asks_a_capable_terminal_once() -> None:
    calls = []

    def ask(answer: TerminalAnswer):
        return lambda: calls.append(answer) or answer

    term = {"TERM": "xterm-256color"}
    assert choose(term, terminal=True, ask=ask(EVERYTHING))[0] == "sixel"  # WezTerm, Konsole
    kitty = TerminalAnswer(answered=True, kitty=True)
    assert choose({"TERM": "xterm-kitty"}, terminal=True, ask=ask(kitty)) == ("kitty", "detected")
    assert choose({**term, "KONSOLE_VERSION": "230804"}, terminal=True,
                  ask=ask(kitty))[0] == "halfblock"  # no Unicode placeholders there
    assert choose(term, terminal=True, ask=ask(TerminalAnswer(answered=True)))[0] == "halfblock"
    assert choose(term, terminal=True, ask=ask(TerminalAnswer(answered=False))) == (
        "halfblock", "the terminal did not answer")
    assert len(calls) == 5
    assert choose(term, terminal=False, ask=asked_never) == ("halfblock", "no terminal to ask")
    mode, reason = choose({**term, "GANTUI_GRAPHICS": "retina"}, terminal=True,
                          ask=ask(kitty))
    assert mode == "kitty" and "GANTUI_GRAPHICS=retina is not one of" in reason


def test_detect_uses_the_answer_and_its_cell_size(monkeypatch) -> None:
    monkeypatch.setattr(graphics, "_one_terminal", lambda: True)
    monkeypatch.setattr(graphics, "window_cell", lambda fd=1: None)  # tmux often says 0 px
    monkeypatch.setattr(graphics, "query_terminal", lambda *a, **k: EVERYTHING)
    found = graphics.detect({"TERM": "foot"})
    assert (found.mode, found.cell, found.reason, found.window) == (
        "sixel", (9, 18), "detected", False)
    assert graphics.detect({"TERM": "xterm"}).mode == "halfblock"
    assert graphics.detect({"TERM": "foot"}, headless=True).reason == "no terminal to ask"


# ---- the query, over a real pseudo-terminal ---------------------------------------------------

@pytest.mark.parametrize(("reply", "expected"), [
    (b"\x1b_Gi=4711;OK\x1b\\\x1b[6;20;10t\x1b[?62;22c",
     TerminalAnswer(answered=True, kitty=True, cell=(10, 20))),  # kitty
    (b"\x1b[6;16;8t\x1b[?62;4;9;22c", TerminalAnswer(answered=True, sixel=True, cell=(8, 16))),
    (b"\x1b[?1;2c", TerminalAnswer(answered=True)),  # tmux without sixel: APC swallowed
    (b"", TerminalAnswer(answered=False)),  # a terminal that never answers
])
def test_one_round_trip_leaves_nothing_behind(reply: bytes, expected: TerminalAnswer) -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        asked = bytearray()

        def terminal() -> None:  # reads the whole query, then answers it in two pieces
            while not asked.endswith(b"\x1b[c"):
                asked.extend(os.read(master, 1024))
            for piece in (reply[:5], reply[5:]):
                if piece:
                    os.write(master, piece)
                    time.sleep(0.01)

        thread = threading.Thread(target=terminal)
        thread.start()
        start = time.monotonic()
        answer = query_terminal(slave, slave, timeout=0.3)
        took = time.monotonic() - start
        thread.join(5)
        assert answer == expected
        assert took < (0.6 if not reply else 0.25)
        assert asked.startswith(b"\x1b_Gi=4711,") and b"\x1b[16t" in asked
        assert termios.tcgetattr(slave) == before  # echo and line mode are back
        assert not select.select([slave], [], [], 0)[0]  # no answer left to read as keys
    finally:
        os.close(master)
        os.close(slave)


# ---- the dashboard ---------------------------------------------------------------------------

@pytest.mark.parametrize(("env", "mode", "reason"), [
    ({"TERM": "xterm"}, "halfblock", "TERM=xterm"),
    ({"NO_COLOR": "1"}, "halfblock", "NO_COLOR"),
    ({"GANTUI_GRAPHICS": "halfblock"}, "halfblock", "GANTUI_GRAPHICS=halfblock"),
    ({}, "sixel", "detected"),  # the control: that terminal is asked, and says yes
])
def test_fallback_is_the_half_block_preview(monkeypatch, fast_views, env, mode, reason) -> None:
    for key in ("GANTUI_GRAPHICS", "NO_COLOR", "TEXTUAL_DRIVER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    # decide as `gantui watch` would in a terminal that answers yes to everything
    detect = graphics.detect
    monkeypatch.setattr(graphics, "detect", lambda env=None, headless=False: detect(env))
    monkeypatch.setattr(graphics, "_one_terminal", lambda: True)
    monkeypatch.setattr(graphics, "window_cell", lambda fd=1: None)
    monkeypatch.setattr(graphics, "query_terminal", lambda *a, **k: EVERYTHING)
    shown = grid()
    app = GantuiApp(Feed(shown), None, plot_hz=20.0)

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.preview.image is shown)
            assert (app.graphics.mode, app.graphics.reason) == (mode, reason)
            if mode == "halfblock":
                assert app.preview.slot is None and app.preview.border_subtitle == "half-block"
                assert isinstance(app.preview.render(), HalfBlockImage)
            else:
                assert app.graphics.cell == EVERYTHING.cell
                await until(pilot, lambda: app.preview.slot.widget.encodes >= 1)

    asyncio.run(main())


def test_kitty_shows_the_preview_pixels_once_and_again_on_resize(fast_views, kitty_wire):
    first = grid()
    feed = Feed(first)
    app = make_app(feed, "kitty")

    async def main():
        async with app.run_test(size=(160, 48)) as pilot:
            panel = app.preview
            await until(pilot, lambda: panel.slot.widget.encodes == 1)
            widget = panel.slot.widget
            assert panel.border_subtitle == "kitty graphics"
            assert widget.size == (widget.image.width // CELL[0], widget.image.height // CELL[1])
            assert assert_shows(np.asarray(widget.image), first) >= 1
            (sent,) = transmitted(kitty_wire)  # what the terminal gets: the same pixels
            assert np.array_equal(sent, np.asarray(widget.image))

            feed.queue.append(dataclasses.replace(first, step=4))  # the same grid again
            await until(pilot, lambda: "step 4" in str(panel.border_title))
            panel.refresh()
            app.screen.refresh()
            app.export_screenshot()
            await pilot.pause(0.2)
            assert (panel.slot.builds, widget.encodes, len(transmitted(kitty_wire))) == (1, 1, 1)

            wide = panel.content_size.width
            await pilot.resize_terminal(130, 48)  # a narrower panel, room for the same picture
            await until(pilot, lambda: panel.content_size.width < wide)
            await pilot.pause(0.3)
            assert (panel.slot.builds, widget.encodes) == (1, 1)
            await pilot.resize_terminal(80, 24)  # no longer: made and sent again, smaller
            await until(pilot, lambda: widget.encodes == 2)
            smaller = transmitted(kitty_wire)[-1]
            assert smaller.shape[0] < sent.shape[0]
            assert panel.slot.builds == 2 and widget.size.width <= panel.content_size.width

    asyncio.run(main())


def test_sixel_shows_the_preview_pixels_and_encodes_once(fast_views) -> None:
    levels = np.random.default_rng(1).integers(0, 16, (242, 242, 1), np.uint8) * 17
    first = dataclasses.replace(grid(), pixels=levels.tobytes())  # few greys: none merged
    feed = Feed(first)
    app = make_app(feed, "sixel")

    async def main():
        async with app.run_test(size=(160, 48)) as pilot:
            panel = app.preview
            await until(pilot, lambda: panel.slot.widget.encodes >= 1)
            widget = panel.slot.widget
            assert panel.border_subtitle == "sixel"
            assert_shows(np.asarray(widget.image), first)
            sixels = widget.children[0]
            strips = sixels.render_lines(Region(0, 0, *sixels.size))
            data = "".join(seg.text for strip in strips for seg in strip)
            drawn = decode_sixel(data)  # what the terminal would draw
            assert drawn.shape[:2] == (widget.image.height, widget.image.width)
            k = assert_shows(np.asarray(widget.image), first)
            block = np.kron(levels[:, :, 0], np.ones((k, k), np.uint8)).astype(int)
            assert np.abs(drawn[:242 * k, :242 * k].astype(int) - block[..., None]).max() <= 2
            encodes = widget.encodes
            feed.queue.append(dataclasses.replace(first, step=9))
            await until(pilot, lambda: "step 9" in str(panel.border_title))
            app.screen.refresh()
            await pilot.pause(0.2)
            assert (panel.slot.builds, widget.encodes) == (1, encodes)

    asyncio.run(main())


def test_a_new_grid_waits_until_the_last_encode_is_paid_for(monkeypatch, kitty_wire) -> None:
    monkeypatch.setattr(app_mod, "UI_CPU_BUDGET", 0.5)  # a wait of twice each encode's cost
    first, second = grid(seed=2), grid(step=6, seed=3)
    feed = Feed(first)
    app = make_app(feed, "kitty")
    costs: list[float] = []

    async def main():
        async with app.run_test(size=(160, 48)) as pilot:
            panel = app.preview
            app._last_view_cpu = -1e9  # the redraws themselves are not what is measured here
            await until(pilot, lambda: panel.slot.widget.encodes == 1)
            panel.slot.widget.on_encoded = lambda s: (costs.append(s), panel._encoded(s))
            panel._next_picture = time.monotonic() + 0.3  # as if the first had cost 0.15 s
            panel.show(second)
            assert panel.waiting is second and panel.image is first
            await until(pilot, lambda: panel.image is second and panel.slot.widget.encodes == 2)
            assert panel.waiting is None
            assert assert_shows(transmitted(kitty_wire)[-1], second) >= 1

    asyncio.run(main())
    assert costs and costs[0] < 0.5


def test_the_zoom_view_draws_the_whole_grid_in_pixels_with_its_class_labels(fast_views,
                                                                            kitty_wire):
    cfg = tiny("cdcgan-mnist").to_dict()
    shown = grid(nrow=10)
    started = ev.RunStarted("", "toy", "cdcgan-mnist", "cpu", 0, 100, cfg, "toy data")
    app = make_app(Feed(started, shown), "kitty")

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.preview.image is shown)
            await pilot.press("f")
            await until(pilot, lambda: isinstance(app.screen, ZoomScreen))
            zoom = app.screen.picture
            await until(pilot, lambda: zoom.slot.widget.encodes == 1)
            placed = zoom.slot.fit
            assert placed.shown == 10 and placed.source == (shown.height, shown.width)
            assert_shows(np.asarray(zoom.slot.widget.image), shown)
            assert zoom.slot.widget.region.x == zoom.content_region.x + 3  # after the gutter
            lines = str(zoom.render()).split("\n")
            labels = [(i, line.strip()) for i, line in enumerate(lines) if line.strip()]
            assert [label for _, label in labels] == [str(k) for k in range(10)]
            row_px = placed.size[0] / 10
            for k, (i, _) in enumerate(labels):  # each beside the middle of its grid row
                assert i * CELL[1] <= (k + 0.5) * row_px < (i + 1) * CELL[1]
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, ZoomScreen))

    asyncio.run(main())
    assert any(keys.get("a") == "d" for keys, _ in kitty_wire)  # the zoom's image was freed


def test_pictures_fit_real_pixels_and_crop_only_when_samples_get_too_small() -> None:
    whole = fit_picture(242, 242, 8, 62, 30, CELL)
    assert (whole.shown, whole.size, whole.cells) == (8, (484, 484), (49, 25))  # 2x, crisp
    shrunk = fit_picture(242, 242, 8, 35, 10, CELL)  # 80x24: 200 px tall, samples ~25 px
    assert shrunk.shown == 8 and shrunk.size == (200, 200)
    tiny_panel = fit_picture(242, 242, 8, 20, 4, CELL)
    assert 1 <= tiny_panel.shown < 8
    assert fit_picture(242, 242, 8, 20, 4, CELL, crop=False).shown == 8
    assert fit_picture(242, 242, 8, 0, 10, CELL) is None
