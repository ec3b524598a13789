"""The zoom view: the whole grid full-screen, class rows labelled, earlier grids a key away."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gantui.headless import follow
from gantui.run.follow import RunFollower, sample_files
from gantui.session import start
from gantui.ui import GantuiApp
from gantui.ui.zoom import ZoomScreen

from .conftest import tiny, until


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoom")
    out = {}
    for preset, extra in (("cdcgan-mnist", ("steps=9", "n_samples=30")),
                          ("ring-8", ("steps=60",)), ("dcgan-mnist-plain", ("steps=6",))):
        session = start(tiny(preset, "eval_every=0", *extra), preset, runs_dir=root,
                        device="cpu")
        follow(session, 120)
        assert session.state == "finished", session.error
        out[preset] = session.run_dir
    return out


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_zoom_shows_the_whole_labelled_grid_and_steps_back(finished, size) -> None:
    run_dir = finished["cdcgan-mnist"]
    stored = sample_files(run_dir)
    assert [step for step, _ in stored] == [3, 6, 9]
    app = GantuiApp(RunFollower(run_dir).drain, None)

    async def main():
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.model.image is not None)
            await pilot.press("f")
            await until(pilot, lambda: isinstance(app.screen, ZoomScreen))
            zoom = app.screen
            await pilot.pause()
            title = str(zoom.title_bar.render())
            assert "step 9" in title and "a row per class" in title and "newest" in title
            app.export_screenshot()
            lines = zoom.picture.render()
            rendered = [str(line) for line in lines.renderables]
            labels = [line[:2].strip() for line in rendered if line[:2].strip()]
            assert labels == [str(k) for k in range(10)]  # every class row, in order
            height = zoom.picture.content_size.height
            assert height - 1 <= len(rendered) <= height  # as tall as the screen allows
            await pilot.press("left")
            assert zoom.shown.step == 9 and "3 of 3 stored" in str(zoom.title_bar.render())
            await pilot.press("left", "left", "left")  # stops at the oldest
            assert zoom.shown.step == 3 and "1 of 3 stored" in str(zoom.title_bar.render())
            await pilot.press("end")
            assert "newest" in str(zoom.title_bar.render())
            await pilot.press("escape")
            await until(pilot, lambda: not isinstance(app.screen, ZoomScreen))

    asyncio.run(main())


@pytest.mark.parametrize("preset", ["ring-8", "dcgan-mnist-plain"])
def test_zoom_on_unconditional_runs(finished, preset: str) -> None:
    app = GantuiApp(RunFollower(finished[preset]).drain, None)

    async def main():
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.model.image is not None)
            await pilot.press("f")
            await until(pilot, lambda: isinstance(app.screen, ZoomScreen))
            zoom = app.screen
            await pilot.pause()
            title = str(zoom.title_bar.render())
            assert "a row per class" not in title and "step" in title
            app.export_screenshot()
            await pilot.press("left")
            assert "stored" in str(zoom.title_bar.render())
            app.export_screenshot()  # a stored ring scatter PNG draws as an image
            await pilot.press("f")
            await until(pilot, lambda: not isinstance(app.screen, ZoomScreen))

    asyncio.run(main())


def test_zoom_is_hidden_until_there_is_a_grid() -> None:
    app = GantuiApp(lambda: [], None)

    async def main():
        async with app.run_test(size=(100, 30)) as pilot:
            await pilot.pause()
            assert not app.check_action("zoom", ())
            await pilot.press("f")
            assert not isinstance(app.screen, ZoomScreen)

    asyncio.run(main())
