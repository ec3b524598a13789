"""The dashboard driven through Pilot by a scripted event stream and a real Controller whose
commands a small fake training loop consumes (the real trainer: test_ui_session.py)."""

from __future__ import annotations

import asyncio
import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from textual.widgets import Input, OptionList

from gantui import events as ev
from gantui.config import Config
from gantui.engine.control import Controller
from gantui.ui import GantuiApp, Outcome
from gantui.ui.modals import ChoiceModal, FieldsModal, HelpModal, KeyValueModal
from gantui.ui.plots import MetricPlot
from gantui.ui.preview import PreviewPanel

from .conftest import until


def grid(channels: int, step: int = 1) -> ev.Preview:
    side = 4 * 28 + 10
    pixels = np.random.default_rng(channels).integers(0, 256, (side, side, channels), np.uint8)
    return ev.Preview(step, pixels.tobytes(), side, side, channels, 4, 0.3)


class FakeLoop:
    """Stands in for the trainer: each drain applies queued commands (answering their futures,
    emitting what the trainer would), then trains one step unless paused."""

    def __init__(self, controller: Controller, run_dir: Path, *, steps: int = 10_000,
                 image: ev.Event | None = None) -> None:
        self.controller = controller
        self.cfg = Config()
        self.step = 0
        self.state = "running"
        self.steps = steps
        self.applied: list[dict[str, Any]] = []
        cfg = self.cfg.to_dict()
        self.pending: list[ev.Event] = [
            ev.RunStarted(str(run_dir), "toy", "dcgan-mnist", "cpu", 0, steps, cfg, "toy data"),
            ev.StateChanged(0, "running"),
            image or grid(1),
        ]

    def drain(self) -> list[ev.Event]:
        while (command := self.controller.get()) is not None:
            self.apply(command)
        if self.state == "running" and self.step < self.steps:
            self.step += 1
            v = self.step / 10
            self.pending.append(ev.Metrics(self.step, 0, 1 + math.sin(v), 1 + math.cos(v), 0.6,
                                           0.4, 0.4, 1.0, 2.0, self.cfg.lr_g, self.cfg.lr_d,
                                           100.0, 60.0, 0.0))
        out, self.pending = self.pending, []
        return out

    def apply(self, command) -> None:
        self.applied.append({"action": command.action, **command.changes})
        if command.action in ("pause", "resume"):
            self.state = "paused" if command.action == "pause" else "running"
            self.pending.append(ev.StateChanged(self.step, self.state))
        elif command.action == "checkpoint":
            self.pending.append(ev.Checkpointed(self.step, "ckpt.pt", "requested by ui"))
        elif command.action == "set":
            for key, new in command.changes.items():
                self.pending.append(ev.Changed(self.step, key, getattr(self.cfg, key), new))
            self.cfg = self.cfg.replace(**command.changes)
        elif command.action == "stop":
            self.state = "stopped"
            self.pending.append(ev.StateChanged(self.step, "stopped", "stopped"))
        command.reply.set_result({"action": command.action, "step": self.step})


def run(coro) -> Any:
    return asyncio.run(coro)


def make_app(tmp_path: Path, **kwargs) -> tuple[GantuiApp, FakeLoop]:
    controller = Controller()
    loop = FakeLoop(controller, tmp_path / "run", image=kwargs.pop("image", None))
    return GantuiApp(loop.drain, controller, **kwargs), loop


def log_text(app: GantuiApp) -> str:
    return "\n".join(line.text for line in app.event_log.entries)


@pytest.mark.parametrize("size", [(80, 24), (120, 40), (200, 60)])
@pytest.mark.parametrize("image", ["grey", "rgb", "points"])
def test_renders_at_every_size(tmp_path, size, image):
    if image == "points":
        shown = ev.Points(5, ((0.1, 2.0), (2.0, 0.0)), ((2.0, 0.0), (0.0, 2.0)), 2, 0.9)
    else:
        shown = grid(1 if image == "grey" else 3)
    app, _ = make_app(tmp_path, image=shown)

    async def main():
        async with app.run_test(size=size) as pilot:
            await until(pilot, lambda: app.model.step > 5)
            await pilot.pause()
            plots = [p for p in app.query(MetricPlot) if p.display]  # quality: none yet
            await until(pilot, lambda: all(p.draws for p in plots))
            assert app.query_one(PreviewPanel).image is shown
            app.export_screenshot()  # renders every widget
            await pilot.resize_terminal(size[0] + 7, size[1] + 3)  # live resize
            await pilot.pause()
            app.export_screenshot()

    run(main())


def test_the_quality_title_says_why(tmp_path):
    """The diagnosis line rides in the quality chart's title: the charts draw only their top
    border, so a subtitle there would never be seen."""
    app, loop = make_app(tmp_path)
    values = {"judge_fd": 9.7, "near_copies": 0.0, "d_acc_train": 0.78, "d_acc_held": 0.70,
              "legible": 0.587, "legible_real": 0.957, "r_t": 0.67}
    loop.pending.append(ev.Quality(3, values, "judge_fd", 3, 9.7, 2.0))

    async def main():
        async with app.run_test(size=(160, 40)) as pilot:
            await until(pilot, lambda: app.quality_plot.display)
            title = str(app.quality_plot.border_title)
            assert "best 9.7" in title and "legible 59% (real 96%)" in title
            assert "D calls real: train 78%, held-out 70%" in title
            await until(pilot, lambda: app.quality_plot.draws)
            shown = html.unescape(app.export_screenshot()).replace("\xa0", " ")
            assert "legible 59% (real 96%)" in shown  # drawn, not only set

    run(main())


def test_pause_and_resume(tmp_path):
    app, loop = make_app(tmp_path)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 2)
            await pilot.press("p")
            await until(pilot, lambda: app.model.state == "paused")
            held = loop.step
            await pilot.pause(0.3)
            assert loop.step == held
            await pilot.press("p")
            await until(pilot, lambda: app.model.state == "running" and loop.step > held)

    run(main())
    assert [c["action"] for c in loop.applied] == ["pause", "resume"]


def test_lr_modal_changes_the_controller_state(tmp_path):
    app, loop = make_app(tmp_path)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("l")
            modal = app.screen
            assert isinstance(modal, FieldsModal)
            assert modal.query_one("#in-lr_g", Input).value == "0.0005"  # prefilled
            assert modal.query_one("#in-lr_d", Input).value == "0.0002"
            modal.query_one("#in-lr_g", Input).value = "1e-4"
            modal.query_one("#in-lr_g", Input).focus()
            await pilot.press("enter")
            await until(pilot, lambda: app.model.config["lr_g"] == 1e-4)
            assert not isinstance(app.screen, FieldsModal)
            assert "lr_g: 0.0005 → 0.0001" in log_text(app)

    run(main())
    assert loop.cfg.lr_g == 1e-4 and loop.cfg.lr_d == 2e-4
    assert loop.applied == [{"action": "set", "lr_g": 1e-4}]  # unchanged lr_d not sent


@pytest.mark.parametrize("bad, message", [("fast", "expected float"), ("-1", "lr_g must be"),
                                          ("2", "lr_g must be")])
def test_lr_modal_refuses_invalid_input(tmp_path, bad, message):
    app, loop = make_app(tmp_path)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("l")
            modal = app.screen
            field = modal.query_one("#in-lr_g", Input)
            field.value = bad
            field.focus()
            await pilot.press("enter")
            await until(pilot, lambda: message in modal.error)
            assert app.screen is modal  # still open
            assert message in str(modal.query_one("#error").render())
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is not modal)
            await pilot.pause(0.2)

    run(main())
    assert loop.applied == [] and loop.cfg.lr_g == 5e-4


def test_edit_modal_sets_any_live_key(tmp_path):
    app, loop = make_app(tmp_path)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("e")
            modal = app.screen
            assert isinstance(modal, KeyValueModal)
            # pushed is not yet composed: on loaded cores the widgets mount a frame later
            await until(pilot, lambda: bool(modal.query("#key-label")))
            # pick the key as a user does, through the list; its highlight message queues
            # behind on_mount's own, so once it lands nothing resets the field after us
            keys = modal.query_one("#keys", OptionList)
            keys.highlighted = keys.get_option_index("d_steps")
            await until(pilot, lambda: modal.key == "d_steps"
                        and modal.focused is modal.query_one("#value", Input))
            assert modal.query_one("#value", Input).value == "1"
            modal.query_one("#value", Input).value = "2.5"
            await pilot.press("enter")
            await until(pilot, lambda: "d_steps" in modal.error)
            assert app.screen is modal
            modal.query_one("#value", Input).value = "3"
            await pilot.press("enter")
            await until(pilot, lambda: app.model.config["d_steps"] == 3)

    run(main())
    assert loop.applied == [{"action": "set", "d_steps": 3}]


def test_checkpoint_key(tmp_path):
    app, loop = make_app(tmp_path)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("c")
            await until(pilot, lambda: "checkpoint at step" in log_text(app))

    run(main())
    assert loop.applied == [{"action": "checkpoint"}]


def test_quit_confirm_stops_then_exits(tmp_path):
    app, loop = make_app(tmp_path)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("q")
            assert isinstance(app.screen, ChoiceModal)
            await pilot.press("s")
            await until(pilot, lambda: app.return_value is not None)

    run(main())
    assert app.return_value == Outcome("stop", "stopped", loop.step)
    assert loop.applied == [{"action": "stop"}]


def test_quit_cancel_and_detach(tmp_path):
    app, loop = make_app(tmp_path)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("q")
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, ChoiceModal) and app.return_value is None
            await pilot.press("q", "d")
            await until(pilot, lambda: app.return_value is not None)

    run(main())
    assert app.return_value.detached and loop.applied == []


def test_attached_q_detaches_and_x_stops(tmp_path):
    app, loop = make_app(tmp_path, attached=True)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("x")
            assert isinstance(app.screen, ChoiceModal)
            await pilot.press("n")
            await pilot.pause()
            assert loop.applied == []
            await pilot.press("q")
            await until(pilot, lambda: app.return_value is not None)

    run(main())
    assert app.return_value.action == "detach"


def test_keys_hidden_when_they_do_not_apply(tmp_path):
    points = ev.Points(1, ((0.0, 0.0),), ((2.0, 0.0),), 1, 1.0)
    app, loop = make_app(tmp_path, image=points)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            assert app.check_action("pause", ()) and not app.check_action("save", ())
            assert not app.check_action("stop_run", ())  # only when watching another process
            loop.pending.append(ev.StateChanged(loop.step, "finished"))
            loop.state = "finished"
            await until(pilot, lambda: app.model.ended)
            for action in ("pause", "checkpoint", "learning_rates", "edit"):
                assert not app.check_action(action, ())
            await pilot.press("p", "l")
            await pilot.pause()
            assert loop.applied == [] and len(app.screen_stack) == 1
            await pilot.press("q")  # the run is over: no question
            await until(pilot, lambda: app.return_value is not None)

    run(main())
    assert app.return_value.action == "quit"


def test_save_writes_png_into_run_samples(tmp_path):
    app, _ = make_app(tmp_path, image=grid(3))

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.image is not None)
            await pilot.press("s")
            await until(pilot, lambda: "saved preview" in log_text(app))

    run(main())
    saved = list((tmp_path / "run" / "samples").glob("preview-step*.png"))
    assert len(saved) == 1


def test_smoothing_window_help_and_alerts(tmp_path):
    app, loop = make_app(tmp_path)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("z")
            assert app.smoothing == 0.6
            await pilot.press("z", "z", "z")
            assert app.smoothing == 0.0
            await pilot.press("w")
            assert app.window == app.window_size
            await pilot.press("w")
            assert app.window is None
            await pilot.press("question_mark")
            assert isinstance(app.screen, HelpModal)
            await pilot.press("escape")
            await pilot.pause()
            loop.pending.append(ev.Alert(loop.step, "grad_explode", "Gradients are exploding."))
            await until(pilot, lambda: app.model.alerts == 1)
            lines = app.event_log.entries
            assert any(x.level == "warning" and "exploding" in x.text for x in lines)

    run(main())


def test_a_failing_command_is_reported_not_raised(tmp_path):
    class Refusing(Controller):
        def checkpoint(self, source: str = "local"):
            future = super().checkpoint(source)
            self.get()  # nobody will apply it: answer with an error like the trainer would
            future.set_exception(ValueError("weights are not finite"))
            return future

    controller = Refusing()
    loop = FakeLoop(controller, tmp_path)
    app = GantuiApp(loop.drain, controller)

    async def main():
        async with app.run_test() as pilot:
            await until(pilot, lambda: app.model.step > 1)
            await pilot.press("c")
            await until(pilot, lambda: "checkpoint failed" in log_text(app))

    run(main())
