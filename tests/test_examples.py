"""The examples/ scripts through the real CLI: ``gantui run ... --no-ui``, steered with
``gantui ctl``, stopped by a signal, killed."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from gantui.run.follow import RunFollower
from gantui.run.lock import is_locked
from gantui.run.runs import read_run
from gantui.run.store import RunStore
from gantui.ui import GantuiApp

from .conftest import until
from .test_cli import wait_for

pytestmark = pytest.mark.slow  # the example scripts trained under gantui run

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def gantui(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gantui", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=timeout, check=False)


def state_of(run_dir: Path) -> str:
    info = read_run(run_dir, is_live=is_locked)
    return info.state if info is not None else "none"


def test_both_examples_run_headless_under_gantui_run(tmp_path: Path) -> None:
    out = gantui("run", str(EXAMPLES / "classifier.py"), "--steps", "20", "--eval-every", "10",
                 "--name", "clf", "--no-ui", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "starting clf (classifier.py)" in out.stdout and "finished at step 20" in out.stdout
    records = RunStore.open(tmp_path / "runs" / "clf").metrics()
    assert {"loss", "accuracy", "held_out_accuracy"} <= set(records[-1])
    _watch_shows_a_chart_per_value(tmp_path / "runs" / "clf", records)

    out = gantui("run", str(EXAMPLES / "dcgan_mnist.py"), "--steps", "20", "--log-every", "5",
                 "--sample-every", "10", "--batch-size", "16", "--ngf", "8", "--ndf", "8",
                 "--name", "gan", "--no-ui", cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    run = tmp_path / "runs" / "gan"
    assert state_of(run) == "finished"
    assert {"loss_d", "loss_g", "d_real", "d_fake", "grad_g", "grad_d", "img_per_s"} <= \
        set(RunStore.open(run).metrics()[-1])
    assert sorted(p.name for p in (run / "samples").iterdir()) == \
        ["step-00000010.png", "step-00000020.png"]
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["ckpt-00000020.pt"]
    listing = gantui("runs", cwd=tmp_path)
    assert "gan" in listing.stdout and "finished" in listing.stdout


def start_long(tmp_path: Path, name: str) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gantui", "run", str(EXAMPLES / "dcgan_mnist.py"), "--steps",
         "10000000", "--log-every", "5", "--batch-size", "8", "--ngf", "4", "--ndf", "4",
         "--name", name, "--no-ui"], cwd=tmp_path, env=ENV,
        stdout=open(tmp_path / f"{name}.out", "w"), stderr=subprocess.STDOUT)
    run = tmp_path / "runs" / name
    wait_for(lambda: (run / "control.sock").exists() or proc.poll() is not None, 120)
    assert proc.poll() is None, (tmp_path / f"{name}.out").read_text()
    wait_for(lambda: (run / "metrics.jsonl").exists(), 60)
    return proc, run


def test_ctl_steers_a_script_and_stops_it(tmp_path: Path) -> None:
    proc, run = start_long(tmp_path, "steer")
    try:
        out = gantui("ctl", str(run), "set", "lr_g=1e-4", cwd=tmp_path)
        assert out.returncode == 0 and "set lr_g 0.0002 -> 0.0001" in out.stdout, out.stderr
        out = gantui("ctl", str(run), "set", "lr_g=1", cwd=tmp_path)
        assert out.returncode == 1 and "expected float in [1e-07, 0.1]" in out.stderr
        out = gantui("ctl", str(run), "set", "ngf=3", cwd=tmp_path)
        assert out.returncode == 1 and "unknown key 'ngf'; live keys: lr_g, lr_d, " \
            "sample_every" in out.stderr
        assert "paused at step" in gantui("ctl", str(run), "pause", cwd=tmp_path).stdout
        status = gantui("ctl", str(run), "status", cwd=tmp_path).stdout
        assert "paused" in status and "lr_g=0.0001" in status
        out = gantui("ctl", str(run), "checkpoint", cwd=tmp_path)
        assert "checkpoint written" in out.stdout, out.stderr
        assert "resumed" in gantui("ctl", str(run), "resume", cwd=tmp_path).stdout
        out = gantui("ctl", str(run), "stop", cwd=tmp_path)
        assert out.returncode == 0 and "stopped at step" in out.stdout
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert state_of(run) == "stopped"
    changes = [r for r in RunStore.open(run).events() if r["event"] == "set"]
    assert [(c["key"], c["old"], c["new"]) for c in changes] == [("lr_g", 2e-4, 1e-4)]


def test_sigterm_to_gantui_run_stops_the_script_and_records_it(tmp_path: Path) -> None:
    proc, run = start_long(tmp_path, "term")
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    output = (tmp_path / "term.out").read_text()
    assert state_of(run) == "stopped", output
    assert "SIGTERM: writing a checkpoint, then stopping" in output
    assert list((run / "checkpoints").glob("ckpt-*.pt"))
    assert not is_locked(run)


def test_a_killed_script_reads_as_crashed(tmp_path: Path) -> None:
    proc, run = start_long(tmp_path, "killed")
    child = int(RunStore.open(run).owner()["pid"])
    try:
        os.kill(child, signal.SIGKILL)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not is_locked(run), 30)
    listing = gantui("runs", cwd=tmp_path).stdout
    assert any(line.startswith("killed") and "crashed" in line for line in listing.splitlines())


def _watch_shows_a_chart_per_value(run: Path, records: list[dict]) -> None:
    """``gantui watch`` on a script's run (the dashboard over its run directory, as the CLI
    builds it): the script's own names get a chart each, drawn from the run's values."""
    app = GantuiApp(RunFollower(run).drain, None, attached=True)

    async def main() -> None:
        async with app.run_test(size=(120, 40)) as pilot:
            await until(pilot, lambda: app.model.step == records[-1]["step"])
            await until(pilot, lambda: {"loss", "accuracy"} <= set(app.extra_plots))
            plot = app.extra_plots["accuracy"]
            await until(pilot, lambda: plot.draws > 0)
            assert "waiting for metrics" not in plot.render().plain
            assert app.model.extra["accuracy"].values[-1] == records[-1]["accuracy"]
            await pilot.press("q")

    asyncio.run(main())
