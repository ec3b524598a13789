"""The sample preview: half-block rendering, fitting, colour downgrade, PNG export."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image
from rich.console import Console

from gantui.events import Preview
from gantui.ui.preview import (
    HalfBlockImage,
    fit,
    render_preview,
    resample,
    samples_shown,
    save_png,
)


def make_preview(channels: int, nrow: int = 4, cell: int = 30) -> Preview:
    side = nrow * cell
    rng = np.random.default_rng(channels)
    pixels = rng.integers(0, 256, (side, side, channels), dtype=np.uint8)
    return Preview(7, pixels.tobytes(), side, side, channels, nrow, 0.5)


def console_output(renderable, color_system: str) -> str:
    console = Console(file=io.StringIO(), color_system=color_system, force_terminal=True,
                      width=200, legacy_windows=False)
    console.print(renderable)
    return console.file.getvalue()


def test_grey_grid_renders_grey_half_blocks():
    image, shown = render_preview(make_preview(1), cols=40, rows=20)
    assert shown == 4
    rows = image.rows()
    assert len(rows) == 20 and all(len(r) == 40 for r in rows)
    for segment in rows[3]:
        assert segment.text == "▀"
        top, bottom = segment.style.color.triplet, segment.style.bgcolor.triplet
        assert top.red == top.green == top.blue  # grey levels
        assert bottom.red == bottom.green == bottom.blue


def test_rgb_grid_renders_colours():
    image, _ = render_preview(make_preview(3), cols=30, rows=15)
    colours = {seg.style.color.triplet for row in image.rows() for seg in row}
    assert any(len({c.red, c.green, c.blue}) > 1 for c in colours)


def test_pixels_map_top_to_foreground_bottom_to_background():
    img = np.zeros((2, 1, 3), dtype=np.uint8)
    img[0, 0] = (255, 0, 0)
    img[1, 0] = (0, 0, 255)
    (segment,), = HalfBlockImage(img).rows()
    assert tuple(segment.style.color.triplet) == (255, 0, 0)
    assert tuple(segment.style.bgcolor.triplet) == (0, 0, 255)


def test_without_truecolor_rich_downgrades_to_256_and_16_colours():
    image, _ = render_preview(make_preview(3), cols=20, rows=10)
    assert "38;2;" in console_output(image, "truecolor")
    out256 = console_output(image, "256")
    assert "38;5;" in out256 and "38;2;" not in out256 and "▀" in out256
    out16 = console_output(image, "standard")
    assert "38;5;" not in out16 and "38;2;" not in out16 and "▀" in out16


def test_fit_keeps_aspect_and_bounds():
    assert fit(100, 100, 40, 10) == (20, 20)  # height-bound: 10 rows = 20 px
    assert fit(100, 200, 40, 40) == (20, 40)  # width-bound
    h, w = fit(242, 242, 80, 60)
    assert h <= 120 and w <= 80 and h % 2 == 0


def test_small_panels_show_a_top_left_subgrid():
    assert samples_shown(240, 240, 8, 200, 100) == 8
    small = samples_shown(240, 240, 8, 20, 10)
    assert 1 <= small < 8
    image, shown = render_preview(make_preview(1, nrow=8), cols=20, rows=10)
    assert shown == small and image is not None


def test_resample_averages_when_shrinking():
    img = np.arange(16, dtype=np.uint8).reshape(4, 4, 1)
    assert resample(img, 2, 2)[..., 0].tolist() == [[3, 5], [11, 13]]
    assert resample(img, 8, 8).shape == (8, 8, 1)


def test_save_png_writes_full_resolution_without_overwriting(tmp_path):
    preview = make_preview(3)
    first = save_png(preview, tmp_path / "samples")
    second = save_png(preview, tmp_path / "samples")
    assert first != second and first.exists() and second.exists()
    with Image.open(first) as img:
        assert img.size == (preview.width, preview.height) and img.mode == "RGB"
    with Image.open(save_png(make_preview(1), tmp_path)) as img:
        assert img.mode == "L"
