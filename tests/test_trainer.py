"""The training engine at toy size: real steps, real files, the CPU."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gantui import config
from gantui import events as ev
from gantui.engine.previews import Previews
from gantui.headless import follow
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start

from .conftest import tiny, wait_until


@pytest.mark.parametrize("preset", sorted(config.preset_names()))
def test_every_preset_builds_and_takes_real_steps(preset: str, runs_dir: Path,
                                                  tmp_path: Path) -> None:
    from .conftest import make_image_folder
    from .owndata import own_data

    extra = []
    if config.load(preset)[1].dataset == "folder":
        extra.append(f"data={make_image_folder(tmp_path / 'imgs', n=20)}")
    extra += own_data(config.load(preset)[1].dataset, tmp_path)
    # the user-model example's own widths (256 and 128) shrunk as tiny() shrinks ngf and ndf
    extra += [f"model_args.{k}=16" for k in ("g_width", "d_width")
              if k in config.load(preset)[1].model_args]
    cfg = tiny(preset, *extra)
    session = start(cfg, preset, runs_dir=runs_dir, device="cpu")
    events = follow(session, timeout=120)
    assert not session.error, session.error
    assert session.state == "finished"
    metrics = [e for e in events if isinstance(e, ev.Metrics)]
    assert [m.step for m in metrics] == list(range(cfg.log_every, cfg.steps + 1, cfg.log_every))
    assert all(math.isfinite(m.loss_d) and math.isfinite(m.loss_g) for m in metrics)
    assert all(0 <= m.d_real <= 1 and 0 <= m.d_fake <= 1 for m in metrics)
    assert all(m.grad_g > 0 and m.grad_d > 0 and m.img_per_s > 0 for m in metrics)
    images = [e for e in events if isinstance(e, (ev.Preview, ev.Points))]
    assert images, "no preview emitted"
    store = RunStore.open(session.run_dir)
    assert len(store.metrics()) == len(metrics)
    assert list(store.samples.glob("step-*.png"))
    assert store.checkpoint_paths()


def test_conditional_preview_has_a_row_per_class(runs_dir: Path) -> None:
    cfg = tiny("cdcgan-mnist", "n_samples=30")
    session = start(cfg, "cdcgan-mnist", runs_dir=runs_dir, device="cpu")
    previews = [e for e in follow(session, 120) if isinstance(e, ev.Preview)]
    labels = session.trainer.previews.fixed_labels
    assert labels.tolist() == [c for c in range(10) for _ in range(3)]
    grid = previews[-1]
    assert grid.nrow == 3 and grid.channels == 1
    assert len(grid.pixels) == grid.height * grid.width * grid.channels
    assert grid.height > grid.width  # 10 rows of 3 samples


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    path = RunStore.open(run_dir).checkpoint_paths()[-1]
    state = load_checkpoint_file(path)
    return {**{f"G.{k}": v for k, v in state["G"].items()},
            **{f"D.{k}": v for k, v in state["D"].items()}}


@pytest.mark.parametrize("preset", ["ring-8", "mlp-mnist", "cdcgan-mnist"])
def test_resume_is_exact(preset: str, runs_dir: Path) -> None:
    """N steps, resume, N steps == 2N straight (weights, optimizer, data order, dropout RNG)."""
    n = 30 if preset == "ring-8" else 4
    # lr_decay follows the run's length, which the resume extends: off here
    base = ["checkpoint_every=1000", "sample_every=1000", f"log_every={n // 2}", "lr_decay=none"]
    straight = start(tiny(preset, *base, f"steps={2 * n}"), preset, runs_dir=runs_dir,
                     name="straight", device="cpu")
    follow(straight, 120)
    half = start(tiny(preset, *base, f"steps={n}"), preset, runs_dir=runs_dir, name="half",
                 device="cpu")
    follow(half, 120)
    resumed = start(None, "", resume=half.run_dir, sets=[f"steps={2 * n}"], device="cpu")
    events = follow(resumed, 120)
    assert resumed.state == "finished" and not resumed.error
    assert any(isinstance(e, ev.RunStarted) and e.resumed and e.step == n for e in events)
    a, b = _weights(straight.run_dir), _weights(half.run_dir)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # the metrics file continues where it stopped
    steps = [r["step"] for r in RunStore.open(half.run_dir).metrics()]
    assert steps == list(range(n // 2, 2 * n + 1, n // 2))


def test_resume_falls_back_past_a_truncated_checkpoint(tiny_cfg, runs_dir: Path) -> None:
    session = start(tiny_cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    follow(session, 60)
    store = RunStore.open(session.run_dir)
    newest = store.checkpoint_paths()[-1]
    newest.write_bytes(newest.read_bytes()[:100])  # a crash mid-copy, a full disk...
    resumed = start(None, "", resume=session.run_dir, sets=["steps=90"], device="cpu")
    events = follow(resumed, 60)
    warnings = [e.message for e in events if isinstance(e, ev.Alert)]
    assert any("unreadable" in w and "falling back" in w for w in warnings)
    assert any(isinstance(e, ev.RunStarted) and e.step == 30 for e in events)
    assert resumed.state == "finished"


def test_resume_refuses_structural_changes_and_finished_runs(tiny_cfg, runs_dir: Path) -> None:
    from gantui.errors import GantuiError

    session = start(tiny_cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    follow(session, 60)
    with pytest.raises(GantuiError, match="nz cannot change when resuming"):
        start(None, "", resume=session.run_dir, sets=["nz=4"], device="cpu")
    with pytest.raises(GantuiError, match="already finished 60 of 60 steps"):
        start(None, "", resume=session.run_dir, device="cpu")


def test_control_pause_set_checkpoint_stop(runs_dir: Path) -> None:
    cfg = tiny("ring-8", "steps=100000", "checkpoint_every=100000", "log_every=5",
               "lr_decay=none")  # the lr as set, whichever step the pause lands on
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    ack = session.controller.pause().result(timeout=30)
    held = session.trainer.step
    assert ack["step"] == held and session.state == "paused"
    ack = session.controller.set({"lr_g": "1e-4", "d_steps": 2}).result(timeout=30)
    assert ack["changes"] == [{"key": "lr_g", "old": 1e-3, "new": 1e-4},
                              {"key": "d_steps", "old": 1, "new": 2}]
    assert session.trainer.step == held  # paused: no step taken
    assert session.trainer.opt_g.param_groups[0]["lr"] == 1e-4
    path = Path(session.controller.checkpoint().result(timeout=30)["path"])
    assert path.is_file() and load_checkpoint_file(path)["step"] == held
    session.controller.resume().result(timeout=30)
    wait_until(lambda: session.trainer.step > held, 30, "a step after the resume")
    stop = session.controller.stop().result(timeout=30)
    session.join(30)
    assert not session.alive and session.state == "stopped"
    assert load_checkpoint_file(Path(stop["path"]))["step"] == stop["step"]
    journal = RunStore.open(session.run_dir).events()
    sets = [r for r in journal if r["event"] == "set"]
    assert {"event": "set", "key": "lr_g", "old": 1e-3, "new": 1e-4, "step": held} in sets
    assert [r["state"] for r in journal if r["event"] == "state"][-1] == "stopped"
    metrics = RunStore.open(session.run_dir).metrics()
    assert metrics[-1]["lr_g"] == 1e-4


def checkpoint_bytes(store: RunStore) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in store.checkpoint_paths()}


def pause_after_first_checkpoint(session) -> tuple[RunStore, dict[str, bytes]]:
    """Let the run write a checkpoint, pause it, and snapshot the checkpoints on disk."""
    store = RunStore.open(session.run_dir)
    while not store.checkpoint_paths():
        follow_some(session, 0.05)
    session.controller.pause().result(timeout=30)
    return store, checkpoint_bytes(store)


def follow_some(session, seconds: float) -> list[ev.Event]:
    import time

    deadline = time.monotonic() + seconds
    out: list[ev.Event] = []
    while time.monotonic() < deadline:
        out.extend(session.queue.drain())
        time.sleep(0.02)
    return out


def test_bad_live_values_are_refused_without_change(runs_dir: Path) -> None:
    from gantui.config import ConfigError

    cfg = tiny("ring-8", "steps=100000")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    try:
        with pytest.raises(ConfigError, match="lr_g must be in"):
            session.controller.set({"lr_g": "-1"}).result(timeout=30)
        with pytest.raises(ConfigError, match="cannot be changed while training"):
            session.controller.set({"nz": "3"})
        assert session.trainer.cfg.lr_g == cfg.lr_g
    finally:
        session.controller.stop()
        session.join(30)


def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(runs_dir: Path) -> None:
    cfg = tiny("ring-8", "steps=100000", "checkpoint_every=10", "log_every=5")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    store, before = pause_after_first_checkpoint(session)
    assert before
    with torch.no_grad():
        for p in session.trainer.G.parameters():
            p.fill_(float("nan"))
    session.controller.resume()
    events = follow(session, 60)
    assert session.state == "error"
    alerts = [e for e in events if isinstance(e, ev.Alert) and e.kind == "nonfinite"]
    assert alerts and "last good checkpoint is kept" in alerts[0].message
    assert checkpoint_bytes(store) == before


def test_nonfinite_pauses_when_asked(runs_dir: Path) -> None:
    cfg = tiny("ring-8", "steps=100000", "log_every=5")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu", on_nonfinite="pause")
    session.controller.pause().result(timeout=30)
    with torch.no_grad():
        for p in session.trainer.D.parameters():
            p.fill_(float("inf"))
    session.controller.resume().result(timeout=30)  # not the pause from before
    for _ in range(300):
        if session.state == "paused":
            break
        follow_some(session, 0.05)
    assert session.state == "paused" and session.alive
    with pytest.raises(Exception, match="not finite"):
        session.controller.checkpoint().result(timeout=30)
    session.controller.stop()
    session.join(30)
    assert session.state == "stopped"


def test_losses_and_inits_are_selectable(runs_dir: Path) -> None:
    for loss in ("saturating", "hinge", "lsgan"):
        cfg = tiny("dcgan-mnist-plain", f"loss={loss}", "weight_init=default",
                   "label_smoothing=0.1")
        session = start(cfg, "dcgan-mnist-plain", runs_dir=runs_dir, device="cpu")
        follow(session, 60)
        assert session.state == "finished", loss


def test_a_failed_periodic_checkpoint_warns_and_training_goes_on(runs_dir: Path,
                                                                 monkeypatch) -> None:
    original = RunStore.save_checkpoint
    calls = []

    def io_error_once(self, state, keep, warn=None):  # a full disk: tests/test_faults_disk.py
        calls.append(state["step"])
        if len(calls) == 1:
            raise OSError(5, "Input/output error")
        return original(self, state, keep, warn)

    monkeypatch.setattr(RunStore, "save_checkpoint", io_error_once)
    cfg = tiny("ring-8", "steps=60", "checkpoint_every=30")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    events = follow(session, 60)
    assert session.state == "finished" and not session.error
    alerts = [e.message for e in events if isinstance(e, ev.Alert)]
    assert any("Input/output error while writing checkpoints/ckpt-00000030.pt (" in a
               and "training continues" in a for a in alerts), alerts
    assert [p.name for p in RunStore.open(session.run_dir).checkpoint_paths()] == [
        "ckpt-00000060.pt"]


def test_a_crash_inside_a_step_journals_it_and_keeps_the_checkpoints(runs_dir: Path) -> None:
    cfg = tiny("ring-8", "steps=100000", "checkpoint_every=20")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    store, before = pause_after_first_checkpoint(session)

    def broken():  # D has just been updated, G has not: no resume point
        raise RuntimeError("simulated out of memory")

    session.trainer.g_step = broken
    session.controller.resume()
    session.join(30)
    assert session.state == "error" and isinstance(session.error[0], RuntimeError)
    journal = store.events()
    assert any(r["event"] == "alert" and "simulated out of memory" in r["message"]
               for r in journal)
    assert not any(r["event"] == "checkpoint" and r["reason"] == "crash" for r in journal)
    assert checkpoint_bytes(store) == before
    assert journal[-1]["event"] == "state" and journal[-1]["state"] == "error"


def test_a_crash_between_steps_saves_the_completed_step(runs_dir: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tiny("ring-8", "steps=100000", "checkpoint_every=100000", "sample_every=7")

    def broken(_previews):
        raise OSError(5, "Input/output error")

    # broken before the thread starts: patched after, a slow test thread could miss step 7
    monkeypatch.setattr(Previews, "draw", broken)
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    session.join(30)
    assert session.state == "error"
    crash = [r for r in RunStore.open(session.run_dir).events()
             if r["event"] == "checkpoint" and r["reason"] == "crash"]
    assert len(crash) == 1 and load_checkpoint_file(Path(crash[0]["path"]))["step"] == 7
