"""The live compare view (``gantui watch RUN RUN …``, a sweep): shared charts, the table, the
sample grids and their step slider, focus on one run and back, steering the cursor run or the
marked ones; at 80x24 and 160x48, over copies of the session's finished run and one live run."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import time
from pathlib import Path

import pytest

from gantui.errors import GantuiError
from gantui.session import start
from gantui.studies.runset import COLORS, resolve
from gantui.ui.compare import CHARTS, CompareApp, CompareState, Focus, dashboard_for
from gantui.ui.picker import RunPicker

from .conftest import cli, tiny, until

LRS = (1e-4, 2e-4, 5e-4, 1e-3)


def make_sweep(finished: Path, parent: Path, n: int, name: str = "sw") -> Path:
    """A sweep directory of ``n`` copies of ``finished`` varying ``lr_g`` (and the seed past
    four runs), each copy's losses and quality a little different, as ``gantui sweep``
    lays one out."""
    sweep = parent / name
    sweep.mkdir(parents=True)
    runs = []
    for i in range(n):
        lr, seed = LRS[i % 4], i // 4
        run = sweep / f"lr_g={lr:g}-seed={seed}"
        shutil.copytree(finished, run, ignore=shutil.ignore_patterns("checkpoints", "run.lock"))
        config = (run / "config.toml").read_text()
        config = re.sub(r"^lr_g = .*$", f"lr_g = {lr}", config, flags=re.M)
        (run / "config.toml").write_text(re.sub(r"^seed = .*$", f"seed = {seed}", config,
                                                flags=re.M))
        journal = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
        for record in journal:
            if record["event"] == "start":
                record["config"].update(lr_g=lr, seed=seed)
        (run / "events.jsonl").write_text("".join(json.dumps(r) + "\n" for r in journal))
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        (run / "metrics.jsonl").write_text("".join(
            json.dumps({**r, "loss_d": r["loss_d"] * (1 + 0.1 * i)}) + "\n" for r in records))
        (run / "quality.jsonl").write_text(json.dumps({
            "step": 60, "values": {"modes": 8 - i % 4, "hq": 0.5}, "primary": "modes",
            "best_step": 60, "best_value": 8 - i % 4, "seconds": 0.1}) + "\n")
        runs.append({"name": run.name, "params": {"lr_g": lr, "seed": seed}})
    (sweep / "sweep.json").write_text(json.dumps({
        "version": 1, "name": name, "preset": "ring-8", "vary": {"lr_g": list(LRS)},
        "seeds": list(range(max(1, -(-n // 4)))), "sets": [], "runs": runs}))
    return sweep


def cells(app: CompareApp, row: int) -> list[str]:
    """The table's cells of ``row`` as plain text."""
    return [str(getattr(c, "plain", c)) for c in app.table.get_row_at(row)]


def test_runs_are_named_by_what_differs(finished_ring: Path, tmp_path: Path) -> None:
    sweep = make_sweep(finished_ring, tmp_path, 4)
    runset = resolve([sweep])
    assert runset.keys == ["lr_g"] and runset.title == "sw"
    assert [r.label for r in runset.runs] == [f"lr_g={lr:g}" for lr in LRS]
    assert [r.color for r in runset.runs] == list(COLORS[:4])
    # runs named one by one: the config keys that differ (the seed too, here)
    picked = resolve([sweep / "lr_g=0.0001-seed=0", sweep / "lr_g=0.001-seed=0",
                      sweep / "lr_g=0.0001-seed=0"])  # a repeat is dropped
    assert picked.keys == ["lr_g"] and [r.label for r in picked.runs] == \
        ["lr_g=0.0001", "lr_g=0.001"]
    with pytest.raises(GantuiError, match="not a gantui run or sweep"):
        resolve([tmp_path])
    # bad input on the command line: one line, exit 1, no traceback
    result = cli("watch", str(sweep / "lr_g=0.0001-seed=0"), str(tmp_path / "nope"))
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "no run or sweep directory" in result.stderr
    result = cli("watch", str(sweep))
    assert result.returncode == 1 and "compare view needs a terminal" in result.stderr


def test_sweep_compared_at_80x24_and_160x48_focused_and_back(finished_ring: Path,
                                                             tmp_path: Path) -> None:
    sweep = make_sweep(finished_ring, tmp_path, 4)
    state = CompareState(resolve([sweep]))

    async def main() -> None:
        app = CompareApp(state)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: all(r.model.state == "finished" for r in state.runs))
            await until(pilot, lambda: "finished" in cells(app, 3))
            assert cells(app, 0)[1:] == ["0.0001", "finished", "60/60", "modes 8", "8 @60",
                                         cells(app, 0)[-1]]
            assert cells(app, 3)[4:6] == ["modes 5", "5 @60"]
            # every chart has a line per run; two fit at 80x24 and m pages through the rest
            assert all(len(p.lines) == 4 for p in app.plots)
            assert [p.display for p in app.plots] == [True, True] + [False] * 5
            await until(pilot, lambda: app.plots[0].draws > 0)
            assert "waiting" not in app.plots[0].render().plain
            assert app.legend.entries(78)[0] == "━ lr_g=0.0001"  # the names fit
            await pilot.press("m")
            assert [p.display for p in app.plots][2:4] == [True, True]
            # the sample grids side by side, one slider for all of them
            await pilot.press("g")
            assert app.samples and app.steps == [20, 40, 60]
            assert all(g.image is not None and g.image.step == 60 for g in app.previews)
            await pilot.press("left")
            assert {g.image.step for g in app.previews} == {40}
            await pilot.press("l")
            assert {g.image.step for g in app.previews} == {60}
            await pilot.press("g", "down", "enter")
        assert app.return_value == Focus(1)

        dashboard = dashboard_for(state, 1)  # the full dashboard of run 2 ...
        async with dashboard.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: dashboard.model.state == "finished")
            assert dashboard.model.run_dir == str(sweep / "lr_g=0.0002-seed=0")
            assert dashboard.model.config["seed"] == 0
            await pilot.press("q")  # ... and back
        steps = [len(r.model.series["loss_d"]) for r in state.runs]

        app = CompareApp(state)
        async with app.run_test(size=(160, 48)) as pilot:
            await until(pilot, lambda: "finished" in cells(app, 3))
            assert [len(r.model.series["loss_d"]) for r in state.runs] == steps  # not reread
            assert app.table.cursor_row == 1  # where it was
            assert all(p.display for p in app.plots)  # all seven charts fit, quality included
            assert "modes" in app.plots[-1].border_title
            await pilot.press("q")
        assert app.return_value is None

    asyncio.run(main())
    state.close()


def test_a_live_run_steered_from_the_compare_view(finished_ring: Path, tmp_path: Path) -> None:
    """A live run and three finished ones in a sweep: pause it from the cursor, set a value
    on the marked runs after a confirmation, stop it; the finished ones are skipped."""
    sweep = make_sweep(finished_ring, tmp_path, 3)
    listing = json.loads((sweep / "sweep.json").read_text())
    listing["runs"].insert(0, {"name": "live", "params": {"lr_g": 2e-3, "seed": 0}})
    (sweep / "sweep.json").write_text(json.dumps(listing))
    cfg = tiny("ring-8", "steps=10000000", "log_every=50", "checkpoint_every=10000000",
               "lr_g=0.002")
    state = CompareState(resolve([sweep]))  # before the run starts: listed, pending
    live = state.runs[0]
    state.poll()
    assert live.state == "pending" and state.runs[1].state == "finished"
    session = start(cfg, "ring-8", runs_dir=sweep, name="live", device="cpu")

    async def main() -> None:
        app = CompareApp(state)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: live.steerable and live.model.step > 0)
            await pilot.press("p")  # the run under the cursor: no question asked
            await until(pilot, lambda: session.state == "paused")
            await until(pilot, lambda: cells(app, 0)[2] == "paused")
            await pilot.press("space")  # marked: the keys act on the marked runs, after asking
            await pilot.press("down", "space")  # a finished run marked too: skipped
            await pilot.press("e")
            assert len(app.screen_stack) == 2
            await pilot.press(*"0.0005", "enter")  # lr_g, its value selected: replaced
            await until(pilot, lambda: len(app.screen_stack) == 2 and "Set" in str(
                app.screen.question))
            await pilot.press("y")
            await until(pilot, lambda: "lr_g" in live.model.changed_at)
            assert not state.runs[1].model.changed_at  # the finished run: skipped
            await pilot.press("x", "s")
            await until(pilot, lambda: live.model.ended, timeout=60)
            await pilot.press("q")

    try:
        asyncio.run(main())
    finally:
        state.close()
        session.controller.stop()
        session.join(30)


def test_sixteen_finished_runs_and_the_redraw_cost(finished_ring: Path, tmp_path: Path) -> None:
    """16 runs at once at 80x24 (the legend falls back to numbers) and 160x48; the redraw
    cost with 16 lines on every chart is reported (printed), never asserted."""
    sweep = make_sweep(finished_ring, tmp_path, 16)
    state = CompareState(resolve([sweep]))
    assert state.runset.keys == ["lr_g", "seed"]

    async def main() -> None:
        for size in ((80, 24), (160, 48)):
            app = CompareApp(state)
            async with app.run_test(size=size) as pilot:
                await until(pilot, lambda app=app: "finished" in cells(app, 15))
                assert app.legend.entries(size[0] - 2)[15] == "━16"
                assert cells(app, 15)[1:3] == ["0.001", "3"]
                shown = [p for p in app.plots if p.display]
                await until(pilot, lambda shown=shown: all(p.draws for p in shown))
                draws = [p.draws for p in shown]
                start = time.thread_time()
                for run in state.runs:  # new data in every run: every shown chart redraws
                    run.model.metrics_version += 1
                app.redraw()
                await until(pilot, lambda shown=shown, draws=draws: all(
                    p.draws > d for p, d in zip(shown, draws, strict=True)))
                cost = time.thread_time() - start
                print(f"redraw of {len(shown)} charts x 16 runs at {size[0]}x{size[1]}: "
                      f"{cost * 1000:.0f} ms CPU")
                await pilot.press("q")

    asyncio.run(main())
    state.close()


def test_picker_marks_runs_to_compare(finished_ring: Path, tmp_path: Path) -> None:
    sweep = make_sweep(finished_ring, tmp_path / "runs", 2)
    picker = RunPicker(tmp_path / "runs")

    async def main() -> None:
        async with picker.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: len(picker.runs) == 2)
            await pilot.press("space", "down", "space")
            assert len(picker.marked) == 2
            await pilot.press("enter")

    asyncio.run(main())
    assert sorted(picker.return_value) == sorted(sweep / r for r in (
        "lr_g=0.0001-seed=0", "lr_g=0.0002-seed=0"))
    assert len(CHARTS) == 7
