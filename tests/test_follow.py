"""The run directory follower: real runs replayed, appended records followed, edge cases."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from PIL import Image

from gantui import events as ev
from gantui.engine.trainer import JOURNALED
from gantui.files import read_jsonl
from gantui.headless import follow
from gantui.run import follow as follow_mod
from gantui.run.follow import RunFollower, grid_nrow, metrics_from_record
from gantui.session import start

from .conftest import make_image_folder, tiny


def _run(tmp: Path, preset: str, *extra: str) -> tuple[Path, list[ev.Event]]:
    """A real finished toy run with one live change; its directory and the live stream."""
    session = start(tiny(preset, *extra), preset, runs_dir=tmp / "runs", device="cpu")
    session.controller.set({"lr_g": 1e-4})
    events = follow(session, timeout=120)
    assert session.state == "finished" and not session.error, session.error
    return session.run_dir, events


@pytest.fixture(scope="module")
def grey_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ev.Event]]:
    """A finished dcgan-mnist-plain run (grey 1-channel grids)."""
    return _run(tmp_path_factory.mktemp("grey"), "dcgan-mnist-plain")


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[ev.Event]]:
    """A finished 16 px dcgan-celeba run on a folder of random images (RGB grids)."""
    tmp = tmp_path_factory.mktemp("rgb")
    images = make_image_folder(tmp / "images", n=20)
    return _run(tmp, "dcgan-celeba", f"data={images}", "image_size=16")


@pytest.fixture
def copied(grey_run: tuple[Path, list[ev.Event]], tmp_path: Path) -> Path:
    """A private copy of the grey run to append to and rewrite."""
    return Path(shutil.copytree(grey_run[0], tmp_path / grey_run[0].name))


def _journaled(live: list[ev.Event]) -> list[ev.Event]:
    """What the trainer wrote down from its live stream: metrics and journaled events, without
    the unjournaled ``checkpointing`` state and the state restored right after it."""
    kept, skip_next_state = [], False
    for event in live:
        if isinstance(event, ev.StateChanged) and event.state == "checkpointing":
            skip_next_state = True
        elif isinstance(event, ev.StateChanged) and skip_next_state:
            skip_next_state = False
        elif isinstance(event, (ev.Metrics, *JOURNALED)):
            kept.append(event)
    return kept


def _plain(events: list[ev.Event]) -> list[dict]:
    return [json.loads(json.dumps(ev.to_record(e), default=list)) for e in events]


def _previews(events: list[ev.Event]) -> list[ev.Preview]:
    return [e for e in events if isinstance(e, ev.Preview)]


def _newest_png(run_dir: Path) -> Path:
    return sorted((run_dir / "samples").glob("step-*.png"))[-1]


# ---- replay -------------------------------------------------------------------------------


def test_replay_of_a_finished_run_is_the_trainers_own_stream(grey_run) -> None:
    run_dir, live = grey_run
    replay = RunFollower(run_dir).drain()

    assert isinstance(replay[0], ev.RunStarted) and replay[0].run_dir == str(run_dir)
    metrics = [e for e in replay if isinstance(e, ev.Metrics)]
    assert len(metrics) == len(read_jsonl(run_dir / "metrics.jsonl")) > 0
    assert any(isinstance(e, ev.Changed) and e.key == "lr_g" for e in replay)
    # previews are decoded from samples/ and the system gauge comes from system.jsonl: the
    # rest is the trainer's own stream, record for record
    (system,) = [e for e in replay if isinstance(e, ev.System)]
    assert system.ram_total > 0 and system.cpus >= 1
    assert system.gpus or "NVIDIA" in system.gpu_note
    trainer_stream = [e for e in replay if not isinstance(e, (ev.Preview, ev.System))]
    assert _plain(trainer_stream) == _plain(_journaled(live))
    assert trainer_stream[-1] == ev.StateChanged(6, "finished", trainer_stream[-1].message)


def test_replayed_grey_preview_is_the_trainers_last_preview(grey_run) -> None:
    run_dir, live = grey_run
    (preview,) = _previews(RunFollower(run_dir).drain())
    expected = _previews(live)[-1]
    assert preview.channels == 1 and preview.nrow == expected.nrow == 4
    assert (preview.step, preview.height, preview.width) == (expected.step, expected.height,
                                                             expected.width)
    assert preview.pixels == expected.pixels  # no downsampling needed: byte for byte
    assert math.isnan(preview.diversity)


def test_replayed_rgb_preview_matches_and_downsamples(rgb_run) -> None:
    run_dir, live = rgb_run
    (preview,) = _previews(RunFollower(run_dir).drain())
    expected = _previews(live)[-1]
    assert preview.channels == expected.channels == 3
    assert (preview.height, preview.width, preview.pixels) == (expected.height, expected.width,
                                                               expected.pixels)

    with Image.open(_newest_png(run_dir)) as png:
        full_w, full_h = png.size
        full_mean = sum(png.convert("L").tobytes()) / (full_w * full_h)
    (small,) = _previews(RunFollower(run_dir, preview_max_side=32).drain())
    assert max(small.height, small.width) == 32
    assert small.height == round(full_h * 32 / max(full_w, full_h))
    assert small.width == round(full_w * 32 / max(full_w, full_h))
    assert len(small.pixels) == small.height * small.width * 3
    grey = Image.frombytes("RGB", (small.width, small.height), small.pixels).convert("L")
    assert abs(sum(grey.tobytes()) / (small.width * small.height) - full_mean) < 3  # area mean


def test_second_drain_of_an_unchanged_run_is_empty(grey_run) -> None:
    follower = RunFollower(grey_run[0])
    assert follower.drain()
    assert follower.drain() == []
    assert follower.drain() == []


def test_small_read_chunks_give_the_same_events(grey_run, monkeypatch) -> None:
    expected = RunFollower(grey_run[0]).drain()
    monkeypatch.setattr(follow_mod, "CHUNK_BYTES", 7)  # lines split across many reads
    assert RunFollower(grey_run[0]).drain() == expected


# ---- following ----------------------------------------------------------------------------


def _append(path: Path, text: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(text)


def test_follows_appended_metrics_journal_and_torn_lines(copied: Path) -> None:
    follower = RunFollower(copied)
    follower.drain()
    record = read_jsonl(copied / "metrics.jsonl")[-1]
    line = json.dumps(record | {"step": 8})

    _append(copied / "metrics.jsonl", line + "\n")
    (new,) = follower.drain()
    assert new == ev.Metrics(**(record | {"step": 8}))

    torn = json.dumps(record | {"step": 10})
    _append(copied / "metrics.jsonl", torn[:25])
    assert follower.drain() == []
    _append(copied / "metrics.jsonl", torn[25:] + "\n")
    assert [m.step for m in follower.drain()] == [10]

    _append(copied / "events.jsonl", json.dumps(ev.to_record(ev.Note(10, "hello"))) + "\n")
    _append(copied / "metrics.jsonl", "not json\n\n" + json.dumps({"step": 12, "extra": 1})
            + "\n" + json.dumps({"loss_d": 1.0}) + "\n")
    note, sparse, extra = follower.drain()
    assert note == ev.Note(10, "hello")
    assert sparse.step == 12 and sparse.epoch == 0 and math.isnan(sparse.loss_d)
    assert extra == ev.Scalars(12, {"extra": 1.0})  # a script's own name (gantui.api)
    assert follower.drain() == []


def test_a_last_line_without_newline_is_read_once(copied: Path) -> None:
    follower = RunFollower(copied)
    follower.drain()
    _append(copied / "events.jsonl", json.dumps(ev.to_record(ev.Note(7, "no newline"))))
    assert follower.drain() == [ev.Note(7, "no newline")]
    _append(copied / "events.jsonl", "\n")
    assert follower.drain() == []


def test_a_newer_png_yields_exactly_one_preview(copied: Path, monkeypatch) -> None:
    decoded = []
    real_decode = follow_mod.decode_preview
    monkeypatch.setattr(follow_mod, "decode_preview",
                        lambda *a: decoded.append(a[0].name) or real_decode(*a))
    follower = RunFollower(copied)
    assert len(_previews(follower.drain())) == 1

    Image.new("RGB", (30, 20), (200, 10, 10)).save(copied / "samples" / "step-00000009.png")
    (preview,) = follower.drain()
    assert (preview.step, preview.width, preview.height, preview.channels) == (9, 30, 20, 3)
    assert preview.pixels[:3] == bytes((200, 10, 10))
    Image.new("L", (4, 4)).save(copied / "samples" / "step-00000002.png")  # older: ignored
    assert follower.drain() == [] and follower.drain() == []
    assert decoded == ["step-00000006.png", "step-00000009.png"]


def test_a_broken_png_is_skipped_and_not_retried(copied: Path) -> None:
    follower = RunFollower(copied)
    follower.drain()
    (copied / "samples" / "step-00000099.png").write_bytes(b"\x89PNG torn")
    assert follower.drain() == [] and follower.drain() == []


def test_truncated_journal_starts_over(copied: Path) -> None:
    follower = RunFollower(copied)
    follower.drain()
    lines = (copied / "metrics.jsonl").read_text().splitlines(keepends=True)
    (copied / "metrics.jsonl").write_text(lines[0])
    replay = follower.drain()
    assert isinstance(replay[0], ev.RunStarted)
    assert len([e for e in replay if isinstance(e, ev.Metrics)]) == 1
    assert len(_previews(replay)) == 1


def test_replaced_journal_starts_over(copied: Path) -> None:
    follower = RunFollower(copied)
    first = follower.drain()
    path = copied / "events.jsonl"
    tmp = path.with_name("events.new")
    shutil.copyfile(path, tmp)
    tmp.replace(path)  # same bytes, new file
    assert follower.drain() == first


# ---- odd directories ----------------------------------------------------------------------


def test_missing_then_appearing_run_dir(tmp_path: Path) -> None:
    run_dir = tmp_path / "later"
    follower = RunFollower(run_dir)
    assert follower.drain() == [] and follower.drain() == []
    run_dir.mkdir()
    assert follower.drain() == []
    started = ev.RunStarted("elsewhere", "later", "ring-8", "cpu", 0, 50, {"steps": 50}, "")
    (run_dir / "events.jsonl").write_text(json.dumps(ev.to_record(started)) + "\n")
    (run_dir / "metrics.jsonl").write_text('{"step": 10, "loss_d": 0.5')
    (first,) = follower.drain()
    assert first == ev.RunStarted(str(run_dir), "later", "ring-8", "cpu", 0, 50, {"steps": 50},
                                  "")


def test_run_started_is_made_up_from_config_and_owner_when_not_journaled(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text('steps = 40\nn_samples = 16\npreset = "x"\n')
    (tmp_path / "run.json").write_text('{"pid": 1, "preset": "dcgan-mnist", "device": "cuda"}')
    (tmp_path / "metrics.jsonl").write_text('{"step": 20}\n')
    (tmp_path / "samples").mkdir()
    Image.new("L", (10, 10)).save(tmp_path / "samples" / "step-00000020.png")
    started, metrics, preview = RunFollower(tmp_path).drain()
    assert started == ev.RunStarted(str(tmp_path), tmp_path.name, "dcgan-mnist", "cuda", 0, 40,
                                    {"steps": 40, "n_samples": 16, "preset": "x"}, "")
    assert metrics.step == 20 and preview.nrow == 4 and preview.channels == 1


def test_a_resumed_run_leads_with_its_latest_start(tmp_path: Path) -> None:
    records = [ev.RunStarted("a", "r", "p", "cpu", 0, 10, {}, ""), ev.StateChanged(0, "running"),
               ev.StateChanged(10, "stopped"),
               ev.RunStarted("a", "r", "p", "cpu", 10, 20, {}, "", resumed=True),
               ev.StateChanged(10, "running")]
    (tmp_path / "events.jsonl").write_text(
        "".join(json.dumps(ev.to_record(r)) + "\n" for r in records))
    replay = RunFollower(tmp_path).drain()
    assert replay[0].resumed and replay[0].total_steps == 20
    assert replay[1:] == records[1:3] + records[4:]


def test_grid_rows_follow_the_trainers_layout() -> None:
    assert grid_nrow({"n_samples": 64}) == 8
    assert grid_nrow({"n_samples": 20}) == 4
    assert grid_nrow({"n_samples": 30, "n_classes": 10, "conditioning": "embedding"}) == 3
    assert grid_nrow({"n_samples": 512, "dataset": "ring8"}) == 1
    assert grid_nrow({}) == 1


def test_metrics_records_tolerate_missing_and_odd_values() -> None:
    assert metrics_from_record({"loss_d": 1.0}) is None
    assert metrics_from_record({"step": "3"}) is None
    odd = metrics_from_record({"step": 4.0, "epoch": True, "loss_g": "x", "lr_g": 1})
    assert odd.step == 4 and odd.epoch == 0 and odd.lr_g == 1.0 and math.isnan(odd.loss_g)
