"""``gantui watch``: the dashboard over a run directory; a dashboard that loses its terminal."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gantui.headless import follow
from gantui.remote import RemoteController, request, socket_path
from gantui.run.follow import RunFollower
from gantui.run.store import RunStore
from gantui.session import start
from gantui.ui import GantuiApp

from .conftest import tiny, until
from .test_cli import wait_for


def test_watch_shows_a_finished_run_and_follows_appended_metrics(runs_dir: Path) -> None:
    session = start(tiny("dcgan-mnist-plain"), "dcgan-mnist-plain", runs_dir=runs_dir, device="cpu")
    follow(session, 120)
    run = session.run_dir
    app = GantuiApp(RunFollower(run).drain, None, attached=True)
    last = RunStore.open(run).metrics()[-1]

    async def main() -> None:
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.model.step == last["step"])
            assert app.model.state == "finished" and app.model.preset == "dcgan-mnist-plain"
            assert len(app.model.series["loss_d"]) == len(RunStore.open(run).metrics())
            assert app.model.image is not None  # the newest samples/ PNG
            await until(pilot, lambda: all(p.draws for p in app.plots))
            for plot in app.plots:  # the charts draw the run's data, not a placeholder
                assert "waiting for metrics" not in plot.render().plain
            with open(run / "metrics.jsonl", "a") as fh:  # another process writes more
                fh.write(json.dumps({**last, "step": last["step"] + 7, "loss_d": 9.5}) + "\n")
            await until(pilot, lambda: app.model.step == last["step"] + 7)
            assert app.model.series["loss_d"].values[-1] == 9.5
            await pilot.press("q")
        assert app.return_value is not None and app.return_value.action in ("detach", "quit")

    asyncio.run(main())


def test_watch_steers_a_live_run_and_detaches_without_stopping(runs_dir: Path) -> None:
    cfg = tiny("ring-8", "steps=10000000", "log_every=10", "checkpoint_every=10000000")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    controller = RemoteController(session.run_dir)
    apps = [GantuiApp(RunFollower(session.run_dir).drain, controller, attached=True)
            for _ in range(2)]  # two watchers at once

    async def main() -> None:
        async with apps[0].run_test(size=(80, 24)) as one, \
                apps[1].run_test(size=(100, 30)) as two:
            await until(one, lambda: apps[0].model.step > 0)
            await until(two, lambda: apps[1].model.step > 0)
            await one.press("p")
            await until(one, lambda: session.state == "paused")
            await until(two, lambda: apps[1].model.state == "paused")
            await one.press("p")
            await until(one, lambda: session.state == "running")
            await one.press("c")
            await until(one, lambda: any(r["event"] == "checkpoint" and "watch" in r["reason"]
                                         for r in RunStore.open(session.run_dir).events()))
            await one.press("q")
            await two.press("q")

    try:
        asyncio.run(main())
        assert all(app.return_value.action == "detach" for app in apps)
        assert session.alive and request(session.run_dir, {"action": "status"})["state"] == \
            "running"
    finally:
        controller.close()
        session.controller.stop()
        session.join(30)


HUP_STEPS = 1500
"""Enough for seconds of training after the hang-up (the test checks it came mid-run)."""


@pytest.mark.slow  # a dashboard in a pseudo-terminal hung up on
def test_sighup_to_a_dashboard_leaves_training_running_to_completion(tmp_path: Path) -> None:
    """A dropped SSH connection: the dashboard closes, the run trains on and finishes."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gantui", "train", "--preset", "ring-8", "--device", "cpu",
         "--name", "hup", "--set", f"steps={HUP_STEPS}", "--set", "log_every=50",
         "--set", "g_hidden=32,32", "--set", "d_hidden=32,32", "--set", "batch_size=64"],
        cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True)
    os.close(slave)
    run = tmp_path / "runs" / "hup"
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists() and socket_path(run).exists())
        os.close(master)  # the terminal goes away...
        proc.send_signal(signal.SIGHUP)  # ...and the kernel hangs up on the session
        assert proc.wait(timeout=240) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    journal = RunStore.open(run).events()
    (hangup,) = [r for r in journal if r["event"] == "alert" and r["kind"] == "disconnect"]
    assert hangup["step"] < HUP_STEPS  # the hang-up came mid-run: training went on after it
    assert journal[-1]["event"] == "state" and journal[-1]["state"] == "finished"
    assert RunStore.open(run).metrics()[-1]["step"] == HUP_STEPS
