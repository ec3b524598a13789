"""Hostile input and damaged run directories: each case ends in one clear line or a graceful
fallback, never a traceback, a silenced printer or a lost file."""

from __future__ import annotations

import io
import os
import random
import shutil
import threading
from pathlib import Path

import pytest
import torch
from rich.console import Console

from gantui import config
from gantui import events as ev
from gantui.files import read_jsonl, read_toml_dict
from gantui.headless import LinePrinter, follow
from gantui.remote import socket_path
from gantui.run.follow import RunFollower
from gantui.run.restore import checker
from gantui.run.runs import format_table, scan_runs
from gantui.run.store import RunStore, StoreError
from gantui.session import start
from gantui.studies.compare import load_runs, summary
from gantui.system import system_lines
from gantui.text import safe
from gantui.ui.model import RunModel

from .conftest import cli, copy_run, scripted, tiny
from .test_cli import TINY, spawn, wait_for
from .test_remote import raw


@pytest.fixture
def finished_run(finished_ring: Path):
    """Makes a finished tiny ring-8 run with checkpoints at steps 30 and 60: a copy of the
    session's run, or trained here when ``extra`` overrides change it."""

    def make(runs_dir: Path, name: str = "r", *extra: str) -> Path:
        if not extra:
            return copy_run(finished_ring, runs_dir, name)
        session = start(tiny("ring-8", *extra), "ring-8", runs_dir=runs_dir, name=name,
                        device="cpu")
        follow(session, 120)
        assert session.state == "finished"
        return session.run_dir

    return make


def resume(run_dir: Path, *sets: str):
    session = start(None, "", resume=run_dir, sets=list(sets), device="cpu")
    events = follow(session, 120)
    return session, events


def dead(_: Path) -> bool:
    return False


@pytest.fixture
def no_thread_tracebacks(monkeypatch):
    """Fails the test if any thread dies of an exception (it would print a traceback)."""
    died: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    yield died
    assert not died, f"a thread died: {died!r}"


# ---- the control socket --------------------------------------------------------------------

def test_socket_survives_huge_numbers_deep_nesting_and_random_bytes(
        runs_dir: Path, no_thread_tracebacks, capfd) -> None:
    cfg = tiny("ring-8", "steps=100000000", "checkpoint_every=100000000")
    session = start(cfg, "ring-8", runs_dir=runs_dir, name="live", device="cpu")
    try:
        run = session.run_dir
        huge = b'{"action":"set","changes":{"log_every":' + b"1" * 5000 + b"}}\n"
        for payload in (huge, b"[" * 60_000 + b"\n", b"{" * 7000 + b"\n",
                        b'{"action":"set","changes":{"lr_g":"' + b"9" * 6000 + b'"}}\n',
                        b"\xff\xfe\n", b'{"action": 5}\n', b"A" * 100_000):
            reply = raw(run, payload)
            assert reply["ok"] is False and len(reply["error"]) < 300, reply
        rng = random.Random(0)
        pieces = [b"{", b"}", b"[", b"]", b'"action"', b":", b",", b'"set"', b'"changes"',
                  b'"lr_g"', b"1e999", b"-", b"\\ud800", b'"', b"\x00", b"\n", b"9" * 50]
        for _ in range(60):
            payload = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
            payload += bytes(rng.randrange(256) for _ in range(rng.randint(0, 8))) + b"\n"
            reply = raw(run, payload)
            assert isinstance(reply, dict) and "ok" in reply
        assert raw(run, b'{"action":"status"}\n')["ok"] is True  # still serving
        assert session.alive
    finally:
        session.controller.stop()
        follow(session, 60)
    journal = [e for e in read_jsonl(session.run_dir / "events.jsonl")
               if e.get("event") == "alert" and e.get("kind") == "control"]
    assert any("malformed control request refused" in e["message"] for e in journal)
    assert all(len(e["message"]) < 400 for e in journal)
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.slow  # a headless run in a child process
def test_odd_sources_are_escaped_and_printing_goes_on(tmp_path: Path) -> None:
    """A lone surrogate and escape sequences in ``source``: the headless printer shows them
    as escapes, never stops printing, and the journal holds no raw control characters."""
    proc = spawn("train", "--no-ui", "--preset", "ring-8", *TINY, "--set", "steps=100000000",
                 "--set", "log_every=20", "--set", "checkpoint_every=100000000",
                 "--name", "r", "--device", "cpu", cwd=tmp_path)
    run = tmp_path / "runs" / "r"
    try:
        wait_for(lambda: socket_path(run).exists())
        for source in ('"\\ud800"', '"\\u001b[31mRED\\nstep 123/456 FORGED"', '"\\u202eevil"'):
            reply = raw(run, b'{"action":"checkpoint","source":' + source.encode() + b"}\n")
            assert reply["ok"] is True, reply
        marker = len(read_jsonl(run / "metrics.jsonl"))
        wait_for(lambda: len(read_jsonl(run / "metrics.jsonl")) > marker + 3)
        assert raw(run, b'{"action":"stop","source":"test"}\n')["ok"] is True
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "\x1b" not in out and "\u202e" not in out
    assert "requested by \\ud800" in out
    assert "requested by \\x1b[31mRED\\x0astep 123/" in out
    assert not any(line.startswith("step 123/456 FORGED") for line in out.splitlines())
    assert out.rstrip().endswith(f"resume with: gantui train --resume {Path('runs/r')}"), out
    reasons = [r["reason"] for r in read_jsonl(run / "events.jsonl")
               if r.get("event") == "checkpoint"]
    assert len(reasons) >= 3 and all(safe(r) == r for r in reasons)  # escaped when journaled


def test_printer_survives_unencodable_text() -> None:
    class Latin1(io.StringIO):
        encoding = "latin-1"

        def write(self, text: str) -> int:
            text.encode(self.encoding)  # raises like a real latin-1 terminal would
            return super().write(text)

    out = Latin1()
    printer = LinePrinter(out)
    printer(ev.Note(1, "snowman \u2603 and \udc80"))
    printer(ev.Note(2, "still printing"))
    assert not printer.broken
    assert out.getvalue().splitlines() == ["snowman \\u2603 and \\udc80", "still printing"]


def test_a_crash_is_said_once_in_the_headless_lines() -> None:
    """The crash's alert says why; the error state and the closing line do not repeat it
    (on a lost rank the reason is two lines long: it was printed three times)."""
    from types import SimpleNamespace

    from gantui.headless import finish

    out = io.StringIO()
    printer = LinePrinter(out)
    why = "ZeroDivisionError: boom"
    printer(ev.Alert(7, "error", f"{ev.CRASHED}{why}"))
    printer(ev.StateChanged(7, "error", why))
    session = SimpleNamespace(state="error", error=[ZeroDivisionError("boom")], run_dir="runs/x",
                              trainer=SimpleNamespace(step=7, write_failure=None))
    assert finish(session, printer) == 1
    assert out.getvalue().splitlines() == [f"step 7: error: training crashed: {why}",
                                           "run ended with an error; run directory runs/x"]
    other = LinePrinter(io.StringIO())  # an error no crash line told: the closing line does
    other(ev.StateChanged(3, "error", "training diverged (non-finite loss)"))
    session.error = [ValueError("bad")]
    finish(session, other)
    assert "run ended with an error: ValueError: bad;" in other.out.getvalue()


# ---- damaged run directories ---------------------------------------------------------------

def test_invalid_utf8_in_metrics_does_not_block_compare_or_resume(
        runs_dir: Path, finished_run) -> None:
    run = finished_run(runs_dir)
    with open(run / "metrics.jsonl", "ab") as fh:
        fh.write(b"\xff\n")
    (curves,) = load_runs([run])
    assert curves.records and curves.last("loss_d") is not None
    out = cli("compare", str(run), str(run), cwd=runs_dir)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    session, _ = resume(run, "steps=90")
    assert session.state == "finished"
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")][-3:] == [70, 80, 90]


def test_one_bad_config_toml_lists_that_run_as_unreadable(runs_dir: Path, finished_run) -> None:
    finished_run(runs_dir, "good")
    bad = finished_run(runs_dir, "bad")
    (bad / "config.toml").write_bytes(b'x = "\xff"\n')
    rows = {r.name: r for r in scan_runs(runs_dir, dead)}
    assert rows["bad"].state == "unreadable" and rows["good"].state == "finished"
    out = cli("runs", "--runs-dir", str(runs_dir), cwd=runs_dir)
    assert out.returncode == 0 and "unreadable" in out.stdout and "finished" in out.stdout
    with pytest.raises(config.ConfigError, match="not UTF-8"):
        config.resolve_preset(str(bad / "config.toml"))


@pytest.mark.parametrize("journal", ["metrics.jsonl", "events.jsonl"])
def test_a_torn_last_line_is_terminated_before_appending(
        runs_dir: Path, journal: str, finished_run) -> None:
    run = finished_run(runs_dir)
    path = run / journal
    path.write_bytes(path.read_bytes() + b'{"step": 101, "lo')  # killed mid-write
    before = len(read_jsonl(path))
    resume(run, "steps=90")
    records = read_jsonl(path)
    # kept: set aside with the superseded metrics, or terminated on a line of its own
    kept = path.with_name("metrics-superseded.jsonl") if journal == "metrics.jsonl" else path
    assert b'{"step": 101, "lo\n' in kept.read_bytes()
    if journal == "events.jsonl":
        starts = [r for r in records if r.get("event") == "start"]
        assert starts[-1]["resumed"] is True and starts[-1]["step"] == 60
    else:
        assert [r["step"] for r in records[before:]] == [70, 80, 90]


def _copy_checkpoint(source: Path, run: Path, step: int) -> Path:
    target = run / "checkpoints" / f"ckpt-{step:08d}.pt"
    shutil.copy(source, target)
    return target


def _newest(run: Path) -> Path:
    return RunStore.open(run).checkpoint_paths()[-1]


def test_checkpoints_of_other_shapes_or_types_fall_back_to_the_previous(
        runs_dir: Path, finished_run) -> None:
    run = finished_run(runs_dir, "r")
    wide = finished_run(runs_dir, "wide", "g_hidden=48,48")
    state = torch.load(_newest(run), weights_only=True)
    # same config as this run, other weight shapes: copied in as the newest
    foreign = torch.load(_newest(wide), weights_only=True)
    foreign["config"] = state["config"]
    torch.save(foreign, run / "checkpoints" / "ckpt-00000070.pt")
    out = cli("sample", str(run), "-n", "16", cwd=runs_dir)
    assert out.returncode == 0, out.stderr
    assert "(step 60," in out.stdout
    for field, value in (("config", [1, 2]), ("G", "str"), ("opt_g", 3), ("step", "x")):
        broken = dict(state, **{field: value})
        torch.save(broken, run / "checkpoints" / "ckpt-00000080.pt")
        out = cli("sample", str(run), "-n", "16", cwd=runs_dir)
        assert out.returncode == 0 and "(step 60," in out.stdout, (field, out.stderr)
    warnings: list[str] = []
    session = start(None, "", resume=run, sets=["steps=120"], device="cpu")
    events = follow(session, 120)
    warnings = [e.message for e in events if isinstance(e, ev.Alert)]
    assert session.state == "finished"
    assert any("ckpt-00000080.pt cannot be used" in w or "malformed" in w for w in warnings)
    assert any("ckpt-00000070.pt cannot be used: its G weights do not fit" in w
               for w in warnings), warnings
    assert any(isinstance(e, ev.Note) and "resuming from" in e.message and "00000060" in
               e.message for e in events)


def test_a_checkpoint_of_another_preset_is_refused(runs_dir: Path, finished_run) -> None:
    ring = finished_run(runs_dir, "ring")
    other = finished_run(runs_dir, "other", "nz=4")
    for path in RunStore.open(ring).checkpoint_paths():
        path.unlink()
    _copy_checkpoint(_newest(other), ring, 60)
    out = cli("train", "--resume", str(ring), "--set", "steps=90", "--no-ui", cwd=runs_dir)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert f"belongs to another run (nz 4 vs {tiny().nz} in config.toml)" in out.stderr
    out = cli("sample", str(ring), cwd=runs_dir)
    assert out.returncode == 1 and "belongs to another run" in out.stderr
    explicit = cli("sample", str(ring), "--checkpoint", str(_newest(other)), "--out",
                   str(runs_dir / "x.png"), cwd=runs_dir)
    assert explicit.returncode == 0, explicit.stderr  # a file the user named is theirs to use


def test_compare_and_sample_name_the_path_when_a_file_is_a_directory(
        runs_dir: Path, finished_run) -> None:
    run = finished_run(runs_dir)
    other = finished_run(runs_dir, "other")
    metrics = other / "metrics.jsonl"
    metrics.unlink()
    metrics.mkdir()
    out = cli("compare", str(run), str(other), cwd=runs_dir)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    shutil.rmtree(run / "samples")
    (run / "samples").write_text("not a folder")
    out = cli("sample", str(run), cwd=runs_dir)
    assert out.returncode == 1 and out.stderr.strip() == (
        f"error: {run / 'samples'} exists but is not a directory; move it aside")
    out = cli("train", "--resume", str(other), "--set", "steps=90", "--no-ui", cwd=runs_dir)
    assert out.returncode == 1 and "metrics.jsonl exists but is not a regular file" in out.stderr


def test_stale_temp_files_of_dead_writers_are_removed_on_resume(
        runs_dir: Path, finished_run) -> None:
    run = finished_run(runs_dir)
    dead_pid = 2**22 + 12345  # above any pid_max in use here
    stale = [run / "checkpoints" / f".ckpt-00000090.pt.tmp-{dead_pid}",
             run / f".run.json.tmp-{dead_pid}", run / "samples" / f".step-1.png.tmp-{dead_pid}"]
    for path in stale:
        path.write_bytes(b"\0" * 1000)
    live = run / "samples" / f".step-2.png.tmp-{os.getppid()}"  # a live writer's: kept
    live.write_bytes(b"x")
    _, events = resume(run, "steps=90")
    assert not any(p.exists() for p in stale) and live.exists()
    assert any(isinstance(e, ev.Note) and "removed 3 half-written temp file(s)" in e.message
               for e in events)


def test_the_last_partial_interval_is_logged(runs_dir: Path) -> None:
    session = start(tiny("ring-8", "steps=65"), "ring-8", runs_dir=runs_dir, name="p",
                    device="cpu")
    follow(session, 60)
    assert [r["step"] for r in read_jsonl(session.run_dir / "metrics.jsonl")][-2:] == [60, 65]
    (info,) = scan_runs(runs_dir, dead)
    assert (info.step, info.total_steps, info.state) == (65, 65, "finished")


# ---- values and echoes ----------------------------------------------------------------------

@pytest.mark.parametrize("item", ["log_every=\uff11", "checkpoint_every=\u0663", " lr_g=1e-4",
                                  "lr_g =1e-4", "lr_g= 1e-4", "steps=1__0", "lr_g=1e-4\n",
                                  "data=\x1b[31m"])
def test_only_documented_values_are_accepted(item: str) -> None:
    with pytest.raises(config.ConfigError) as info:
        config.load("ring-8", [item])
    assert "\x1b" not in str(info.value) and "\n" not in str(info.value)


def test_accepted_number_forms() -> None:
    _, cfg = config.load("ring-8", ["steps=10_000", "lr_g=1e-4", "lr_d=.0005", "seed=+3",
                                    "log_every=1e2"])
    assert (cfg.steps, cfg.lr_g, cfg.lr_d, cfg.seed, cfg.log_every) == (10000, 1e-4, 5e-4, 3,
                                                                        100)


def test_echoed_values_are_cut_to_a_readable_length(tmp_path: Path) -> None:
    for item in ("lr_g=" + "9" * 10_000, "x" * 10_000 + "=1", "steps=" + "1" * 10_000,
                 "steps=1e300"):
        out = cli("train", "--no-ui", "--preset", "ring-8", "--set", item, cwd=tmp_path)
        assert out.returncode == 1 and len(out.stderr.splitlines()) == 1, out.stderr[:200]
        assert "x" * 100 not in out.stderr and "9" * 100 not in out.stderr
        assert "1" * 100 not in out.stderr and len(out.stderr) < 1200


def test_safe_escapes_what_a_terminal_would_obey() -> None:
    assert safe("plain text, ünïcode ok") == "plain text, ünïcode ok"
    assert safe("\x1b[2J\r\n\t\u202e\ud800\x7f") == "\\x1b[2J\\x0d\\x0a\\x09\\u202e\\ud800\\x7f"
    assert safe("x" * 100, 10) == "x" * 10 + "…"


# ---- property-style: random bytes appended to every run-directory file ---------------------

def test_readers_survive_random_bytes_in_every_file(runs_dir: Path, finished_run) -> None:
    """Every reader of run directories, on copies of a real run with garbage appended to or
    written over each file: no exception but the project's own one-line errors."""
    pristine = finished_run(runs_dir, "pristine", "eval_every=20")  # quality.jsonl, best.pt
    assert (pristine / "quality.jsonl").is_file() and (pristine / "checkpoints" / "best.pt")
    files = sorted(p.relative_to(pristine) for p in pristine.rglob("*")
                   if p.is_file() and p.name not in ("run.lock",))
    rng = random.Random(1)
    garbage = [b'{"step":1,"values":{"[/x]":1},"primary":"[/x]","best_step":1}\n',
               b'{"step":2,"values":{"a":"b"},"primary":[1]}\n', b"\xff\xfe\x00", b"[" * 5000,
               b'{"step": ' + b"9" * 5000 + b"}", b"\n\n{}\n",
               b'{"event":"start","config":[1],"step":"x"}\n', b"\x1b[31m\n",
               b'{"step":1e999,"loss_d":"nan"}\n', b'{"event":"points","points":[[1]],"step":1}\n']
    trial = 0
    for rel in files:
        for mode in ("append", "replace"):
            trial += 1
            run = runs_dir / f"t{trial}"
            shutil.copytree(pristine, run)
            target = run / rel
            blob = rng.choice(garbage) + bytes(rng.randrange(256) for _ in range(64))
            if mode == "append":
                with open(target, "ab") as fh:
                    fh.write(blob)
            else:
                target.write_bytes(blob)
            read_jsonl(run / "metrics.jsonl")
            read_toml_dict(run / "config.toml")
            follower, model = RunFollower(run), RunModel()
            for _ in range(2):
                for event in follower.drain():
                    assert isinstance(event, ev.Metrics | ev.RunStarted | ev.Preview
                                      | ev.Quality | ev.System | ev.Changed
                                      | ev.Checkpointed | ev.StateChanged | ev.Alert
                                      | ev.Note)
                    model.apply(event)
                    if isinstance(event, ev.System):  # the pane draws whatever it holds
                        system_lines(event, 80, 1), system_lines(event, 160, 9)
            format_table(scan_runs(runs_dir, dead), 0.0)
            Console(file=io.StringIO()).print(summary(load_runs([run])))
            try:
                RunStore.open(run).load_checkpoint(check=checker(read_toml_dict(
                    run / "config.toml")))
            except StoreError:
                pass
            shutil.rmtree(run)
    assert trial == 2 * len(files) and trial >= 12


def test_the_dashboard_model_escapes_what_it_is_given() -> None:
    from gantui.ui.model import hyperparameter_text

    model = RunModel()
    model.apply(ev.RunStarted("d", "\x1b]0;title\x07", "p\u202e", "cpu", 0, 10, {}, ""))
    (line,) = model.apply(ev.Alert(1, "control", "refused set from \x1b[31mx\ny"))
    assert line.text == "refused set from \\x1b[31mx\\x0ay"
    assert model.name == "\\x1b]0;title\\x07" and model.preset == "p\\u202e"
    model.apply(ev.Changed(2, "lr_g", 1e-3, "\x1b[2J"))
    assert hyperparameter_text(model.hyperparameters()["lr_g"]) == "\\x1b[2J"


def test_hostile_quality_records_cannot_break_the_dashboard(tmp_path: Path) -> None:
    import asyncio

    from gantui.ui import GantuiApp

    app = GantuiApp(scripted([
        ev.RunStarted(str(tmp_path), "q", "ring-8", "cpu", 0, 100, {}, ""),
        ev.Quality(5, {"[/x]": 1.0}, "[/x]", 5, 1.0, 0.1),
        ev.Quality(6, {"[@click=app.quit]x": 2.0}, "[@click=app.quit]x", 6, 2.0, 0.1)]), None)

    async def main():
        async with app.run_test(size=(100, 32)) as pilot:
            for _ in range(40):
                await pilot.pause(0.05)
                if app.model.quality is not None and app.model.quality.step == 6:
                    break
            await pilot.pause(0.6)
            assert app.is_running and "click" in str(app.quality_plot.border_title)

    asyncio.run(main())


def test_a_fifo_in_a_run_directory_blocks_no_reader(runs_dir: Path, finished_run) -> None:
    run = finished_run(runs_dir)
    for name in ("events.jsonl", "quality.jsonl", "run.json"):
        path = run / name
        path.unlink(missing_ok=True)
        os.mkfifo(path)
    os.mkfifo(run / "samples" / "step-00000099.png")
    done: list[object] = []

    def read_all() -> None:
        done.append(scan_runs(runs_dir, dead))
        done.append(RunFollower(run).drain())
        done.append(load_runs([run]))

    reader = threading.Thread(target=read_all, daemon=True)
    reader.start()
    reader.join(30)
    assert len(done) == 3, "a reader blocked on a FIFO"
    out = cli("train", "--resume", str(run), "--set", "steps=90", "--no-ui", cwd=runs_dir)
    assert out.returncode == 1 and "not a regular file" in out.stderr
