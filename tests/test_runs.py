"""``gantui runs``: states told apart, last metrics read from the tail, an aligned table."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gantui import events as ev
from gantui.files import open_regular, read_jsonl
from gantui.headless import follow
from gantui.run import runs as runs_mod
from gantui.run.runs import RunInfo, format_age, format_table, read_run, run_state, scan_runs
from gantui.session import start

from .conftest import tiny


def dead(_run_dir: Path) -> bool:
    return False


def alive(_run_dir: Path) -> bool:
    return True


def never_asked(run_dir: Path) -> bool:
    raise AssertionError(f"liveness of {run_dir} asked for an ended run")


def _write_run(path: Path, states: list[str], metrics: list[dict] | None = None,
               preset: str = "ring-8", age: float | None = None) -> Path:
    """A hand-written run directory whose journal ends in ``states``."""
    path.mkdir(parents=True)
    (path / "config.toml").write_text(f'steps = 100\npreset = "{preset}"\n')
    journal = [ev.RunStarted(str(path), path.name, preset, "cpu", 0, 100, {}, "")]
    journal += [ev.StateChanged(10 * i, state) for i, state in enumerate(states)]
    (path / "events.jsonl").write_text("".join(json.dumps(ev.to_record(e)) + "\n"
                                               for e in journal))
    if metrics is not None:
        (path / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if age is not None:
        for name in ("events.jsonl", "metrics.jsonl", "config.toml"):
            if (path / name).exists():
                os.utime(path / name, (age, age))
    return path


def _wait_for_first_log(session) -> None:
    """Wait until the run has logged at least once, so a stop lands mid-run."""
    while session.alive and not (session.run_dir / "metrics.jsonl").exists():
        session.join(0.01)


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A runs folder with a real finished run and a real stopped one."""
    runs_dir = tmp_path_factory.mktemp("runs")
    for name, stop in (("done", False), ("halted", True)):
        session = start(tiny("ring-8", "steps=2000" if stop else "steps=40"), "ring-8",
                        runs_dir=runs_dir, name=name, device="cpu")
        if stop:
            _wait_for_first_log(session)
            session.controller.stop()
        follow(session, timeout=120)
        assert not session.error, session.error
    return runs_dir


def test_real_finished_and_stopped_runs(real_runs: Path) -> None:
    found = {r.name: r for r in scan_runs(real_runs, never_asked)}
    assert set(found) == {"done", "halted"}
    done, halted = found["done"], found["halted"]
    last = read_jsonl(real_runs / "done" / "metrics.jsonl")[-1]
    assert (done.state, done.preset, done.step, done.total_steps) == ("finished", "ring-8", 40,
                                                                      40)
    assert (done.loss_d, done.loss_g) == (last["loss_d"], last["loss_g"])
    assert done.pid == os.getpid() and done.path == real_runs / "done"
    assert halted.state == "stopped" and 0 < halted.step < halted.total_steps == 2000
    assert halted.updated == (real_runs / "halted" / "events.jsonl").stat().st_mtime


@pytest.mark.parametrize(("states", "live", "expected"), [
    (["running", "finished"], False, "finished"),
    (["running", "stopped"], True, "stopped"),
    (["running", "error"], True, "error"),
    (["running"], False, "crashed"),
    (["running"], True, "running"),
    (["running", "paused"], True, "paused"),
    (["running", "paused"], False, "crashed"),
    ([], True, "starting"),
    ([], False, "crashed"),
])
def test_state_tells_a_dead_process_from_a_live_one(tmp_path: Path, states: list[str],
                                                    live: bool, expected: str) -> None:
    run_dir = _write_run(tmp_path / "r", states)
    asked = []

    def is_live(path: Path) -> bool:
        asked.append(path)
        return live

    assert run_state(run_dir, is_live) == expected
    assert asked == ([] if expected in ("finished", "stopped", "error") else [run_dir])


def test_scan_skips_non_runs_and_survives_broken_ones(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "stray.txt").write_text("hi")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.toml").write_text("this is = = not toml")
    (broken / "run.json").write_text("[1, 2")
    (broken / "events.jsonl").write_bytes(b"\xff\xfe{{{\n[1]\n")
    (broken / "metrics.jsonl").write_bytes(b'{"step": "x", "loss_d": null}\n\x00\x01')
    (info,) = scan_runs(tmp_path, dead)
    assert (info.name, info.preset, info.state, info.step, info.total_steps) == (
        "broken", "?", "unreadable", 0, 0)  # its config.toml is not TOML
    assert info.loss_d is None and info.loss_g is None and info.pid is None
    assert scan_runs(tmp_path / "missing", dead) == []


def test_newest_first_and_preset_from_config(tmp_path: Path) -> None:
    _write_run(tmp_path / "old", ["running", "finished"], age=1_000_000.0)
    _write_run(tmp_path / "new", ["running"], preset="dcgan-mnist-plain", age=2_000_000.0)
    _write_run(tmp_path / "mid", ["running", "stopped"], age=1_500_000.0)
    found = scan_runs(tmp_path, alive)
    assert [r.name for r in found] == ["new", "mid", "old"]
    assert found[0].preset == "dcgan-mnist-plain" and found[0].updated == 2_000_000.0


def test_last_metrics_come_from_the_tail_past_a_torn_line(tmp_path: Path, monkeypatch) -> None:
    records = [{"step": s, "loss_d": s / 10, "loss_g": -s / 10} for s in range(1, 400)]
    run_dir = _write_run(tmp_path / "r", ["running", "paused"], metrics=records)
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 400, "loss_d"')  # being written right now
    monkeypatch.setattr(runs_mod, "TAIL_BLOCK", 7)  # records split across many blocks
    info = read_run(run_dir, alive)
    assert (info.state, info.step, info.loss_d, info.loss_g) == ("paused", 399, 39.9, -39.9)
    assert info.total_steps == 100


def test_tail_reading_does_not_read_the_whole_file(tmp_path: Path, monkeypatch) -> None:
    run_dir = _write_run(tmp_path / "r", ["running"], metrics=[{"step": 1}])
    with open(run_dir / "metrics.jsonl", "a") as fh:
        fh.write("\n" * 5_000_000 + '{"step": 9, "loss_d": 1.5, "loss_g": 2.5}\n')
    reads: list[int] = []

    def counting_open(path):
        return _CountedReads(open_regular(path), reads)

    monkeypatch.setattr(runs_mod, "open_regular", counting_open)
    info = read_run(run_dir, alive)
    assert (info.step, info.loss_d) == (9, 1.5)
    assert reads and all(0 < n <= runs_mod.TAIL_BLOCK for n in reads)
    assert sum(reads) <= 2 * runs_mod.TAIL_BLOCK


class _CountedReads:
    """A file object that records how many bytes each ``read`` asked for."""

    def __init__(self, fh, reads: list[int]) -> None:
        self._fh, self._reads = fh, reads

    def read(self, n: int = -1) -> bytes:
        self._reads.append(n)
        return self._fh.read(n)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


def _info(name: str, state: str, step: int, total: int, loss: float | None,
          age: float) -> RunInfo:
    return RunInfo(Path(name), name, "ring-8", state, step, total, loss,
                   None if loss is None else -loss, 10_000_000.0 - age, None)


def test_table_is_aligned_with_ages_and_unknown_losses() -> None:
    table = format_table([
        _info("long-run-name", "running", 1200, 5000, 1.23456, 200),
        _info("b", "crashed", 7, 100, None, 3 * 3600 + 5),
        _info("c", "finished", 300, 300, 0.5, 5 * 86400),
    ], now=10_000_000.0)
    lines = table.splitlines()
    assert lines[0].split() == ["NAME", "PRESET", "STATE", "STEP", "LOSS_D", "LOSS_G",
                                "QUALITY", "AGE"]
    assert lines[1].split() == ["long-run-name", "ring-8", "running", "1200/5000", "1.2346",
                                "-1.2346", "-", "3m"]
    assert lines[2].split() == ["b", "ring-8", "crashed", "7/100", "-", "-", "-", "3h"]
    assert lines[3].split() == ["c", "ring-8", "finished", "300/300", "0.5000", "-0.5000", "-",
                                "5d"]
    for column in ("PRESET", "STATE"):  # left-aligned: every cell starts under its header
        at = lines[0].index(column)
        assert all(line[at - 1] == " " and line[at] != " " for line in lines)
    for column in ("STEP", "LOSS_G", "AGE"):  # right-aligned: every cell ends under it
        end = lines[0].index(column) + len(column)
        assert all(line[end - 1] != " " and line[end:end + 1] in ("", " ") for line in lines)


def test_ages() -> None:
    assert [format_age(s) for s in (-5, 0, 59, 60, 3599, 3600, 86399, 86400 * 9)] == [
        "0s", "0s", "59s", "1m", "59m", "1h", "23h", "9d"]
