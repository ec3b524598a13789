"""The dashboard over the real trainer at toy size (ring-8, tiny MLPs, CPU)."""

from __future__ import annotations

import asyncio
import json

import pytest
from textual.widgets import Input

from gantui import session as session_mod
from gantui.ui import GantuiApp
from gantui.ui.modals import ChoiceModal, FieldsModal

from .conftest import until


def journal(run_dir) -> list[dict]:
    path = run_dir / "events.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture
def live(tiny_cfg, runs_dir):
    """A toy run long enough to steer; stopped and joined whatever the test does."""
    cfg = tiny_cfg.replace(steps=1_000_000, log_every=5, sample_every=50,
                           checkpoint_every=1_000_000, lr_decay="none")  # lr as set
    session = session_mod.start(cfg, "ring-8", runs_dir=runs_dir, name="ui", device="cpu")
    yield session
    if session.alive:
        session.controller.stop()
        session.join(30)
    assert not session.alive


def test_dashboard_steers_the_real_trainer(live):
    app = GantuiApp(live.queue.drain, live.controller)
    trainer = live.trainer
    old_lr_g = trainer.cfg.lr_g
    assert old_lr_g != 1e-4

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: app.model.state == "running" and trainer.step > 10)

            # p holds the step counter, p again resumes it
            await pilot.press("p")
            await until(pilot, lambda: app.model.state == "paused")
            held = trainer.step
            await pilot.pause(0.5)
            assert trainer.step == held
            await pilot.press("p")
            # the dashboard learns the state from its 10 Hz queue poll, apart from the steps
            await until(pilot, lambda: trainer.step > held + 5 and app.model.state == "running")

            # invalid input in the lr dialog is refused and changes nothing
            await pilot.press("l")
            modal = app.screen
            assert isinstance(modal, FieldsModal)
            field = modal.query_one("#in-lr_d", Input)
            field.value = "-0.5"
            field.focus()
            await pilot.press("enter")
            await until(pilot, lambda: "lr_d must be" in modal.error)
            assert app.screen is modal
            await pilot.press("escape")
            await until(pilot, lambda: app.screen is not modal)

            # the lr dialog changes the optimizer and the change is journaled
            await pilot.press("l")
            modal = app.screen
            field = modal.query_one("#in-lr_g", Input)
            field.value = "0.0001"
            field.focus()
            await pilot.press("enter")
            await until(pilot, lambda: app.model.config.get("lr_g") == 1e-4)
            assert trainer.opt_g.param_groups[0]["lr"] == 1e-4
            assert trainer.opt_d.param_groups[0]["lr"] == live.trainer.cfg.lr_d
            assert f"lr_g: {old_lr_g:.4g} → 0.0001" in "\n".join(
                x.text for x in app.event_log.entries)

            # c writes a checkpoint
            await pilot.press("c")
            await until(pilot, lambda: any(live.run_dir.glob("checkpoints/ckpt-*.pt")))
            await until(pilot, lambda: "checkpoint at step" in
                        "\n".join(x.text for x in app.event_log.entries))

            # q, then confirm: checkpoint, stop, and the app exits once the trainer ended
            await pilot.press("q")
            assert isinstance(app.screen, ChoiceModal)
            await pilot.press("s")
            await until(pilot, lambda: app.return_value is not None)

    asyncio.run(main())
    live.join(30)
    assert not live.alive
    assert app.return_value.action == "stop" and app.return_value.state == "stopped"
    records = journal(live.run_dir)
    sets = [r for r in records if r["event"] == "set"]
    assert [(r["key"], r["old"], r["new"]) for r in sets] == [("lr_g", old_lr_g, 1e-4)]
    assert all(r.get("key") != "lr_d" for r in sets)
    assert any(r["event"] == "state" and r["state"] == "stopped" for r in records)
    assert sum(r["event"] == "checkpoint" for r in records) >= 2  # requested + at stop
