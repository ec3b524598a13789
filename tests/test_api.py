"""gantui.api in process: a user's own loop writes a trainer's run directory, is steered
through the real control socket at its step boundary, and survives bad input."""

from __future__ import annotations

import asyncio
import math
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import gantui.api as gantui
from gantui import events as ev
from gantui.cli import app as cli_app
from gantui.headless import follow
from gantui.remote import RemoteError, request
from gantui.run.follow import RunFollower
from gantui.run.lock import is_locked
from gantui.run.runs import read_run
from gantui.run.store import RunStore
from gantui.session import start
from gantui.ui import GantuiApp
from gantui.ui.model import RunModel

from .conftest import tiny, until

TRAINER_METRICS = ("loss_d", "loss_g", "d_real", "d_fake", "d_fake_g", "grad_g", "grad_d",
                   "lr_g", "lr_d", "img_per_s", "data_wait")


def loop(run: gantui.Run, steps: range, until_done: Callable[[], bool] | None = None) -> int:
    """A toy loop: the boundary, then a value per step; returns the step it ended at."""
    step = steps.start
    for step in steps:
        if not run.step(step) or (until_done is not None and until_done()):
            break
        run.log(step + 1, loss=1.0 / (step + 1))
    return step


def ask(run_dir: Path, message: dict) -> threading.Thread | list:
    """Send ``message`` from a client thread (the test's thread is the training loop);
    the reply or the error lands in the returned list."""
    box: list = []

    def send() -> None:
        try:
            box.append(request(run_dir, {**message, "source": "test"}))
        except RemoteError as exc:
            box.append(exc)

    threading.Thread(target=send, daemon=True).start()
    return box


def drive(run: gantui.Run, box: list, start_step: int = 0, timeout: float = 20) -> int:
    """Call the step boundary until ``box`` holds the reply; returns the next step."""
    step, deadline = start_step, time.monotonic() + timeout
    while not box:
        assert time.monotonic() < deadline, "no reply in time"
        run.step(step)
        run.log(step + 1, loss=0.5)
        step += 1
        time.sleep(0.005)
    return step


def test_run_directory_has_the_trainers_files_and_formats(runs_dir: Path) -> None:
    session = start(tiny(), "ring-8", runs_dir=runs_dir, name="trainer", device="cpu")
    follow(session, 60)
    trainer = RunStore.open(session.run_dir)
    reference = trainer.metrics()[-1]

    run = gantui.init({"lr": 2e-4, "model": {"width": 8}}, name="mine", runs_dir=runs_dir,
                      total_steps=20, log_every=5, echo=False, system=False)
    run.live("beta", 0.5, low=0.0, high=1.0)
    run.on_checkpoint({"w": torch.zeros(1)})
    with run:
        for step in range(20):
            run.step(step)
            run.log(step + 1, {name: torch.tensor(0.25) for name in TRAINER_METRICS},
                    epoch=0)
            run.log(step + 1, accuracy=0.5 + step / 100)  # a name of its own
            if step == 9:
                run.image(step + 1, torch.rand(9, 1, 8, 8) * 2 - 1)
    mine = RunStore.open(run.path)
    records = mine.metrics()
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    # the trainer's keys, with the trainer's types, plus the script's own name
    assert set(records[-1]) == set(reference) | {"accuracy"}
    for key, value in reference.items():
        assert type(records[-1][key]) is type(value), key
    assert records[-1]["accuracy"] == pytest.approx(sum(0.5 + s / 100 for s in range(15, 20)) / 5)
    # journal records: the same event names and fields as the trainer's
    theirs = {r["event"]: set(r) for r in trainer.events()}
    ours = {r["event"]: set(r) for r in mine.events()}
    for name in ("start", "state", "checkpoint"):
        assert ours[name] == theirs[name], name
    assert mine.events()[-1]["state"] == "finished"
    assert (mine.path / "config.toml").read_text() == 'lr = 0.0002\n"model.width" = 8\n'
    assert [p.name for p in mine.samples.iterdir()] == ["step-00000010.png"]
    assert not is_locked(run.path) and not (run.path / "control.sock").exists()
    info = read_run(run.path, is_live=is_locked)
    assert (info.state, info.step, info.total_steps, info.loss_d) == ("finished", 20, 20, 0.25)

    # the follower turns it back into the dashboard's events; the model charts the extra name
    model = RunModel()
    for event in RunFollower(run.path).drain():
        model.apply(event)
    assert model.state == "finished" and model.preset == run.label
    assert len(model.series["loss_d"]) == 4 and list(model.extra) == ["accuracy"]
    assert model.hyperparameters() == {"beta": 0.5}
    assert model.image is not None


def test_live_values_change_through_the_control_socket(runs_dir: Path) -> None:
    applied: list[float] = []
    run = gantui.init(name="live", runs_dir=runs_dir, echo=False, system=False)
    run.live("lr", 0.1, low=1e-6, high=1.0, apply=applied.append)
    run.live("mode", "fast", choices=("fast", "slow"))
    with run:
        box = ask(run.path, {"action": "set", "changes": {"lr": "0.05"}})
        step = drive(run, box)
        ack = box[0]
        assert ack["changes"] == [{"key": "lr", "old": 0.1, "new": 0.05}]
        assert run["lr"] == 0.05 and applied == [0.05]
        for changes, said in (({"lr": "5"}, "bad value '5' for lr: expected float in "
                                             "[1e-06, 1]"),
                              ({"lr": "abc"}, "bad value 'abc' for lr"),
                              ({"mode": "medium"}, "expected one of fast, slow"),
                              ({"lrr": "0.1"}, "unknown key 'lrr'; live keys: lr, mode")):
            box = ask(run.path, {"action": "set", "changes": changes})
            step = drive(run, box, step)
            assert isinstance(box[0], RemoteError) and said in str(box[0]), box[0]
        # gantui ctl checks against the script's own spec (run.json) before sending
        result = CliRunner().invoke(cli_app, ["ctl", str(run.path), "set", "lr=2"])
        assert result.exit_code == 1 and "expected float in [1e-06, 1]" in result.output
        status = request(run.path, {"action": "status"})
        assert status["live"] == {"lr": 0.05, "mode": "fast"} and status["state"] == "running"
    changes = [r for r in RunStore.open(run.path).events() if r["event"] == "set"]
    assert changes == [{"event": "set", "step": changes[0]["step"], "key": "lr", "old": 0.1,
                        "new": 0.05}]
    assert run["lr"] == 0.05  # refused changes left it alone


def test_a_failing_apply_callback_is_refused_not_raised(runs_dir: Path) -> None:
    def broken(value: float) -> None:
        raise RuntimeError("no optimizer yet")

    with gantui.init(name="cb", runs_dir=runs_dir, echo=False, system=False) as run:
        run.live("lr", 0.1, low=0.0, high=1.0, apply=broken)
        box = ask(run.path, {"action": "set", "changes": {"lr": "0.2"}})
        drive(run, box)
        assert isinstance(box[0], RemoteError) and "RuntimeError: no optimizer yet" in str(box[0])
        assert run["lr"] == 0.1


def test_pause_checkpoint_resume_and_stop_at_the_step_boundary(runs_dir: Path) -> None:
    model = torch.nn.Linear(2, 2)
    run = gantui.init(name="steer", runs_dir=runs_dir, echo=False, system=False)
    run.on_checkpoint({"model": model})
    states: list[str] = []
    with run:
        def steer() -> None:  # another process's requests, while this thread trains
            states.append(request(run.path, {"action": "pause"})["action"])
            states.append(request(run.path, {"action": "status"})["state"])
            states.append(request(run.path, {"action": "checkpoint"})["path"])
            states.append(request(run.path, {"action": "resume"})["action"])

        threading.Thread(target=steer, daemon=True).start()
        step, deadline = 0, time.monotonic() + 30
        while len(states) < 4:
            assert time.monotonic() < deadline, states
            assert run.step(step)  # held here from the pause to the resume
            run.log(step + 1, loss=0.5)
            step += 1
            time.sleep(0.002)
        assert states[0] == "pause" and states[1] == "paused" and states[3] == "resume"
        assert Path(states[2]).is_file() and run.state == "running"
        journal = RunStore.open(run.path).events()
        paused = next(r for r in journal if r.get("state") == "paused")
        saved = next(r for r in journal if r["event"] == "checkpoint")
        resumed = [r for r in journal if r.get("state") == "running"][-1]
        assert paused["step"] == saved["step"] == resumed["step"]  # no step ran meanwhile
        box = ask(run.path, {"action": "stop"})
        step = drive(run, box, step)
        assert box[0]["action"] == "stop" and Path(box[0]["path"]).is_file()
        assert run.stopping and not run.step(step)  # the loop ends here
    records = RunStore.open(run.path).events()
    assert [r["state"] for r in records if r["event"] == "state"] == \
        ["running", "paused", "running", "stopped"]
    saved = torch.load(run.last_checkpoint, weights_only=True)
    assert set(saved) == {"step", "config", "model"}
    assert torch.equal(saved["model"]["weight"], model.weight)


def test_commands_say_they_wait_when_the_script_is_not_at_a_boundary(runs_dir: Path) -> None:
    with gantui.init(name="wait", runs_dir=runs_dir, echo=False, system=False) as run:
        run.on_checkpoint(lambda path: torch.save({"x": 1}, path))
        box = ask(run.path, {"action": "checkpoint"})
        deadline = time.monotonic() + 20
        while not box:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert box[0]["waiting"] and "has not called run.step() yet" in box[0]["message"]
        assert not list(run.store.checkpoints.iterdir())  # queued, not lost:
        run.step(3)
        assert [p.name for p in run.store.checkpoint_paths()] == ["ckpt-00000003.pt"]


def test_bad_input_is_one_warning_and_never_stops_the_loop(runs_dir: Path, capsys) -> None:
    run = gantui.init(name="bad", runs_dir=runs_dir, log_every=2, system=False)
    with run:
        for step in range(6):
            run.step(step)
            run.log(step + 1, loss=float("nan") if step == 1 else 1.0, word="x",
                    big=torch.ones(3), flag=True)
            run.log(step + 1, {"ok": 1.0, 3: 2.0})
        run.log(2, loss=1.0)  # backwards
        run.step(1)  # backwards
        assert run.image(6, torch.rand(2, 5, 7, 7)) is None  # 5 channels
        assert run.image(6, "not an image") is None
        assert run.image(6, torch.rand(4, 4, 4, 4, 4)) is None
        assert run.image(6, torch.rand(28, 28)) is not None
        assert run.image(6, (torch.rand(28, 28, 3) * 255).to(torch.uint8)) is not None
        with pytest.raises(gantui.RunError, match="bad value 2.0 for lr"):
            run.live("lr", 2.0, low=0.0, high=1.0)
        with pytest.raises(gantui.RunError, match="list is not one of"):
            run.live("sizes", [1, 2])
        with pytest.raises(gantui.RunError, match="already exists; continue it with "
                                                  "resume=True"):
            gantui.init(name="bad", runs_dir=runs_dir, system=False)
        with pytest.raises(gantui.RunError, match="being trained by a live process"):
            gantui.init(name="bad", runs_dir=runs_dir, resume=True, system=False)
    store = RunStore.open(run.path)
    alerts = [r["message"] for r in store.events() if r["event"] == "alert"]
    assert any("loss is not finite (nan) at step 2" in a for a in alerts)
    assert any("word is a str, not a number" in a for a in alerts)
    assert any("big is a tensor of shape (3,)" in a for a in alerts)
    assert any("flag is a bool" in a for a in alerts)
    assert any("3 cannot be a value's name" in a for a in alerts)
    assert any("run.log: step 2 comes after step 6" in a for a in alerts)
    assert any("run.step: step 1 comes after step 5" in a for a in alerts)
    assert any("got shape (2, 5, 7, 7)" in a for a in alerts)
    assert len(alerts) == len(set(alerts))  # each once, though they recur every step
    records = store.metrics()
    assert [r["step"] for r in records] == [2, 4, 6]
    assert math.isnan(records[0]["loss"]) and records[1]["loss"] == 1.0
    assert all(set(r) == {"step", "epoch", "loss", "ok", "time"} for r in records)
    assert store.events()[-1]["state"] == "finished"
    assert "WARNING loss is not finite" in capsys.readouterr().out  # the headless line


def test_an_exception_in_the_loop_is_recorded_and_raised(runs_dir: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with gantui.init(name="boom", runs_dir=runs_dir, echo=False, system=False) as run:
            run.step(0)
            run.log(1, loss=1.0)
            _ = 1 / 0
    records = RunStore.open(run.path).events()
    assert records[-1]["state"] == "error" and "ZeroDivisionError" in records[-1]["message"]
    assert RunStore.open(run.path).metrics()[0]["loss"] == 1.0  # what was logged is kept
    assert read_run(run.path, is_live=is_locked).state == "error"


def test_resume_continues_the_same_directory(runs_dir: Path) -> None:
    with gantui.init(name="again", runs_dir=runs_dir, echo=False, system=False) as run:
        run.on_checkpoint({"w": torch.zeros(1)})
        loop(run, range(0, 7))
    again = gantui.init(name="again", runs_dir=runs_dir, resume=True, echo=False,
                        system=False)
    with again:
        assert again.resumed and again.last_checkpoint.name == "ckpt-00000007.pt"
        assert again.current_step == 7
        loop(again, range(7, 9))
    starts = [r for r in RunStore.open(again.path).events() if r["event"] == "start"]
    assert [s["resumed"] for s in starts] == [False, True] and starts[1]["step"] == 7


def test_the_dashboard_charts_a_classifiers_own_values(runs_dir: Path) -> None:
    with gantui.init(name="clf", runs_dir=runs_dir, log_every=2, echo=False,
                     system=False) as run:
        run.live("lr", 0.01, low=0.0, high=1.0)
        for step in range(6):
            run.step(step)
            run.log(step + 1, loss=1.0 / (step + 1), accuracy=step / 6)
    app = GantuiApp(RunFollower(run.path).drain, None, attached=True)

    async def main() -> None:
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: set(app.extra_plots) == {"loss", "accuracy"})
            await until(pilot, lambda: all(p.draws for p in app.extra_plots.values()))
            assert not app.plots[0].display and not app.grads.display  # no GAN values
            assert app.model.hyperparameters() == {"lr": 0.01}
            assert app.validate_changes({"lr": "0.02"}) == {"lr": 0.02}
            with pytest.raises(Exception, match="expected float in"):
                app.validate_changes({"lr": "7"})
            await pilot.press("q")

    asyncio.run(main())


def test_the_api_imports_neither_textual_nor_the_trainer() -> None:
    code = ("import sys, gantui.api\n"
            "bad = [m for m in sys.modules if m.startswith(('textual', 'gantui.ui', "
            "'gantui.cli', 'gantui.engine.trainer', 'gantui.session'))]\n"
            "print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_a_scalars_line_reads_like_the_headless_metrics_line() -> None:
    from gantui.headless import LinePrinter

    line = LinePrinter().line(ev.Scalars(20, {"epoch": 1, "loss": 0.41, "acc": 0.88,
                                              "img_per_s": 1234.0, "eta_s": 65.0}))
    assert line == "step 20 ep 1    loss  0.4100  acc  0.8800     1,234 img/s"
