"""Quality in a real run: evaluations recorded and followed, the best checkpoint, the alarm,
``gantui eval`` and ``sample --best``, and the stabilizers through ``--set`` and resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from gantui import config
from gantui import events as ev
from gantui.files import read_jsonl
from gantui.headless import follow
from gantui.quality.evaluate import Score
from gantui.quality.tracker import QualityTracker
from gantui.run.follow import RunFollower
from gantui.run.runs import scan_runs
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start

from .conftest import cli, scripted, straight_and_resumed, tiny


def ring_run(runs_dir: Path, name: str, *extra: str):
    session = start(tiny("ring-8", "eval_every=20", *extra), "ring-8", runs_dir=runs_dir,
                    name=name, device="cpu")
    events = follow(session, 120)
    assert session.state == "finished", session.error
    return session, events


def test_evaluations_are_recorded_emitted_and_the_best_kept(runs_dir: Path) -> None:
    session, events = ring_run(runs_dir, "q", "steps=70")
    quality = [e for e in events if isinstance(e, ev.Quality)]
    assert [q.step for q in quality] == [20, 40, 60, 70]  # 70: the final evaluation
    assert all(q.primary == "modes" and 0 <= q.values["hq"] <= 1 for q in quality)
    records = read_jsonl(session.run_dir / "quality.jsonl")
    assert [r["step"] for r in records] == [20, 40, 60, 70]
    assert records[-1]["values"] == quality[-1].values

    best = load_checkpoint_file(RunStore.open(session.run_dir).best_path)
    chosen = max(records, key=lambda r: (r["values"]["modes"], r["values"]["hq"]))
    assert best["best"]["step"] == chosen["step"] == best["step"]
    assert best["best"]["metric"] == "modes" and quality[-1].best_step == chosen["step"]
    assert "best.pt" not in [p.name for p in RunStore.open(session.run_dir).checkpoint_paths()]

    followed = [e for e in RunFollower(session.run_dir).drain() if isinstance(e, ev.Quality)]
    assert followed == quality
    (info,) = scan_runs(runs_dir, lambda _: False)
    assert info.quality.startswith("modes=")


def test_eval_and_sample_best_through_the_cli(runs_dir: Path) -> None:
    session, _ = ring_run(runs_dir, "q", "steps=60")
    run = str(session.run_dir)
    out = cli("eval", run, "--json", cwd=runs_dir)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["step"] == 60 and result["primary"] == "modes" and result["n"] == 2500
    assert set(result["values"]) == {"modes", "hq"}
    table = cli("eval", run, "--best", "-n", "500", cwd=runs_dir)
    assert table.returncode == 0 and "modes *" in table.stdout and "500 samples" in table.stdout
    picture = cli("sample", run, "--best", cwd=runs_dir)
    assert picture.returncode == 0 and "-best-grid" in picture.stdout, picture.stderr
    for args, fragment in ((["--best", "--checkpoint", "x.pt"], "pick one"),
                           (["-n", "3"], "-n must be between 10")):
        bad = cli("eval", run, *args, cwd=runs_dir)
        assert bad.returncode == 1 and fragment in bad.stderr, bad.stderr


def test_eval_works_on_a_run_from_before_quality_existed(runs_dir: Path) -> None:
    session = start(tiny("ring-8", "steps=30", "eval_every=0", "pack=1", "lr_decay=none"),
                    "ring-8", runs_dir=runs_dir, name="old", device="cpu")  # as runs were
    follow(session, 60)
    (path,) = RunStore.open(session.run_dir).checkpoint_paths()
    state = torch.load(path, weights_only=True)
    for key in ("G_ema", "quality"):
        del state[key]
    for key in ("ema", "spectral_norm", "r1_gamma", "r1_every", "instance_noise", "pack",
                "eval_every", "eval_samples", "fid_weights", "lr_decay"):
        del state["config"][key]
    torch.save(state, path)
    assert not (session.run_dir / "quality.jsonl").exists()
    out = cli("eval", str(session.run_dir), cwd=runs_dir)
    assert out.returncode == 0 and "step 30" in out.stdout, out.stderr
    none = cli("sample", str(session.run_dir), "--best", cwd=runs_dir)
    assert none.returncode == 1 and "no best checkpoint yet" in none.stderr


def _score(step: int, fd: float) -> Score:
    return Score(step, {"judge_fd": fd, "classes": 10.0}, "judge_fd", 1.0)


def test_the_alarm_fires_once_when_quality_stays_worse_than_its_best() -> None:
    tracker = QualityTracker()
    fds = [30.0, 12.0, 8.0, 8.5, 20.0, 25.0, 30.0, 31.0, 9.0, 20.0, 20.0, 20.0]
    results = [tracker.update(_score(1000 * (i + 1), fd)) for i, fd in enumerate(fds)]
    improved = [i for i, (better, _) in enumerate(results) if better]
    assert improved == [0, 1, 2]
    warnings = [(i, w) for i, (_, ws) in enumerate(results) for w in ws]
    assert [i for i, _ in warnings] == [6, 11]  # 3 clearly worse in a row; re-armed by 9.0
    kind, message = warnings[0][1]
    assert kind == "quality" and "judge_fd 8 at step 3000" in message
    assert "checkpoints/best.pt" in message
    restored = QualityTracker()
    restored.load_state_dict(json.loads(json.dumps(tracker.state_dict())))
    assert restored.state_dict() == tracker.state_dict()


STABILIZERS = [["ema=0.99"], ["spectral_norm=true"], ["r1_gamma=1", "r1_every=2"],
               ["instance_noise=0.1"], ["pack=4"], ["lr_decay=cosine"]]


@pytest.mark.parametrize("sets", STABILIZERS, ids=lambda s: s[0].split("=")[0])
def test_stabilizers_train_and_resume_exactly(runs_dir: Path, sets: list[str]) -> None:
    """Each stabilizer through --set: it trains, is saved in the checkpoint and config, and
    resuming from the checkpoint at step N of a 2N-step run ends with the same weights."""
    base = ["checkpoint_every=20", "sample_every=10", "log_every=10", "eval_every=0", *sets]
    a, b = straight_and_resumed(runs_dir, "ring-8", base, 40)  # the twin resumes from step 20
    key, value = sets[0].split("=")
    assert b["config"][key] == config.coerce(key, value) != config.Config().to_dict()[key]
    for part in ("G", "D", "G_ema"):
        if a[part] is None:
            assert part == "G_ema" and b[part] is None and "ema=0.99" not in sets
            continue
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)
    if "ema=0.99" in sets:  # the averaged G differs from G, and previews use it
        assert any(not torch.equal(a["G"][k], a["G_ema"][k]) for k in a["G"])
    if "spectral_norm=true" in sets:
        assert any("parametrizations" in k for k in a["D"])


def test_pack_and_instance_noise_are_refused_where_they_cannot_apply() -> None:
    for sets, fragment in ((["pack=3"], "multiple of pack"), (["ema=0.2"], "ema must be"),
                           (["instance_noise=-1"], "instance_noise must be")):
        with pytest.raises(config.ConfigError, match=fragment):
            config.load("ring-8", sets)
    with pytest.raises(config.ConfigError, match="unconditional"):
        config.load("cdcgan-mnist", ["pack=2"])


def test_live_quality_keys_change_mid_run(runs_dir: Path) -> None:
    cfg = tiny("ring-8", "steps=100000", "eval_every=0")
    session = start(cfg, "ring-8", runs_dir=runs_dir, name="live", device="cpu")
    try:
        session.controller.set({"eval_every": "10", "r1_gamma": "0.5",
                                "instance_noise": "0.05"}).result(timeout=30)
        store = RunStore.open(session.run_dir)
        deadline = 0
        while len(store.quality()) < 2 and deadline < 600:
            follow(session, 0.1)
            deadline += 1
    finally:
        session.controller.stop()
        follow(session, 60)
    assert len(store.quality()) >= 2
    changes = {r["key"] for r in store.events() if r.get("event") == "set"}
    assert {"eval_every", "r1_gamma", "instance_noise"} <= changes
    assert all(math.isfinite(r["loss_d"]) for r in store.metrics())


def test_the_dashboard_draws_the_quality_curve(tmp_path: Path) -> None:
    import asyncio

    from gantui.ui import GantuiApp

    events = [ev.RunStarted(str(tmp_path), "q", "ring-8", "cpu", 0, 100, {}, "")]
    for step, modes in ((20, 5.0), (40, 8.0), (60, 6.0)):
        events.append(ev.Quality(step, {"modes": modes, "hq": 0.5}, "modes", 40 if step > 20
                                 else 20, max(5.0, 8.0 if step > 20 else 5.0), 0.01))
    app = GantuiApp(scripted(events), None)

    async def main():
        async with app.run_test(size=(100, 32)) as pilot:
            for _ in range(50):
                await pilot.pause(0.05)
                if app.quality_plot.display and app.quality_plot.draws:
                    break
            assert app.quality_plot.display and app.quality_plot.draws
            assert "modes 6" in app.quality_plot.border_title
            assert "best 8 @40" in app.quality_plot.border_title
            assert list(app.model.series["quality"].values) == [5.0, 8.0, 6.0]

    asyncio.run(main())


def test_a_resume_supersedes_later_evaluations_and_keeps_a_better_best(runs_dir: Path) -> None:
    """A crash after the checkpoint at step 30: evaluations past it move aside, and a best.pt
    written past it (by the lost timeline) is only replaced by a better model."""
    session, _ = ring_run(runs_dir, "crash", "steps=60", "checkpoint_every=30",
                          "eval_every=10")
    run = session.run_dir
    (run / "checkpoints" / "ckpt-00000060.pt").unlink()  # as if killed after step 30's
    before = {r["step"]: r for r in read_jsonl(run / "quality.jsonl")}
    best_before = load_checkpoint_file(run / "checkpoints" / "best.pt")["best"]
    resumed = start(None, "", resume=run, device="cpu")
    events = follow(resumed, 120)
    assert resumed.state == "finished"
    aside = [r["step"] for r in read_jsonl(run / "quality-superseded.jsonl")]
    assert aside == [40, 50, 60]
    assert [r["step"] for r in read_jsonl(run / "quality.jsonl")] == [10, 20, 30, 40, 50, 60]
    best_after = load_checkpoint_file(run / "checkpoints" / "best.pt")["best"]
    if best_before["step"] > 30:
        assert any(isinstance(e, ev.Note) and "stays the one to beat" in e.message
                   for e in events)
        key = lambda b: (b["values"]["modes"], b["values"]["hq"])  # noqa: E731
        assert key(best_after) >= key(best_before)
    assert before[10] == read_jsonl(run / "quality.jsonl")[0]


def test_a_stop_is_not_followed_by_an_evaluation(runs_dir: Path) -> None:
    session = start(tiny("ring-8", "steps=100000", "eval_every=25"), "ring-8",
                    runs_dir=runs_dir, name="stop", device="cpu")
    store = RunStore.open(session.run_dir)
    while not store.quality():
        follow(session, 0.05)
    session.controller.stop().result(timeout=60)
    follow(session, 60)
    assert session.state == "stopped"
    assert all(r["step"] % 25 == 0 for r in store.quality())
