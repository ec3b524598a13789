"""A disk that fills, and checkpoints that are not the run's own (issue 19, defects 5 and 6).

In process, the disk fills through the run directory's own writers: ``open`` in
``gantui.files`` and ``gantui.run.store`` hands out files whose ``write`` raises ENOSPC (after
writing half, as a real disk does) once the disk is full. Around them run the real trainer,
session, torch.save, PNG encoder and journals. One test mounts a real 3 MB-scale tmpfs (this
machine runs as root) and drives the real CLI.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from gantui import events as ev
from gantui import files
from gantui.engine import checkpoint as ckpt
from gantui.headless import LinePrinter, finish, follow
from gantui.run import store as store_mod
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start

from .conftest import cli, tiny

FULL = "No space left on device"


class Disk:
    """Where writes stop fitting: ``fills_at(file name)`` says which write fills it; with
    ``sticky`` every later write fails too, until :meth:`free`."""

    def __init__(self, fills_at: Callable[[str], bool], sticky: bool = True) -> None:
        self.fills_at = fills_at
        self.sticky = sticky
        self.full = False
        self.refused: list[str] = []

    def refuses(self, name: str) -> bool:
        if not self.full and self.fills_at(name):
            self.full = self.sticky
            self.refused.append(name)
            return True
        if self.full:
            self.refused.append(name)
        return self.full

    def free(self) -> None:
        self.full = False
        self.fills_at = lambda name: False


class FillingFile:
    """A real file whose writes fail with ENOSPC, half written, once the disk is full."""

    def __init__(self, fh, disk: Disk, name: str) -> None:
        self._fh, self._disk, self._name = fh, disk, name

    def write(self, data) -> int:
        if self._disk.refuses(self._name):
            half = bytes(data)[: len(data) // 2]
            if half:
                self._fh.write(half)
            raise OSError(errno.ENOSPC, FULL)
        return self._fh.write(data)

    def __getattr__(self, attr: str):
        return getattr(self._fh, attr)

    def __enter__(self) -> FillingFile:
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()


@pytest.fixture
def disk(monkeypatch) -> Callable[..., Disk]:
    """``disk(fills_at, sticky=True)``: route the run directory's writes through a Disk."""

    def install(fills_at: Callable[[str], bool], sticky: bool = True) -> Disk:
        made = Disk(fills_at, sticky)

        def fake_open(path, mode="r", *args, **kwargs):
            fh = builtins.open(path, mode, *args, **kwargs)
            if any(c in mode for c in "wa"):
                return FillingFile(fh, made, Path(path).name)
            return fh

        monkeypatch.setattr(files, "open", fake_open, raising=False)
        monkeypatch.setattr(store_mod, "open", fake_open, raising=False)
        return made

    return install


def wait_until(session, condition: Callable[[], bool], seen: list, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        seen.extend(session.queue.drain())
        session.join(0.02)
    seen.extend(session.queue.drain())


def alerts(events: list) -> list[str]:
    return [e.message for e in events if isinstance(e, ev.Alert)]


def every_line_parses(path: Path) -> bool:
    lines = path.read_bytes().split(b"\n")
    return lines[-1] == b"" and all(json.loads(line) for line in lines[:-1])


def no_temp_files(run: Path) -> bool:
    return not [p for p in run.rglob(".*.tmp-*")]


# ---- the store alone ----------------------------------------------------------------------

def test_torch_save_on_a_full_disk_names_the_file_and_keeps_the_others(tmp_path, disk) -> None:
    store = RunStore.create(tmp_path, "r", {})
    state = {key: {} for key in store_mod.CHECKPOINT_KEYS}
    state.update(version=1, config={}, fixed_noise=torch.zeros(3),
                 G={"w": torch.randn(20_000)})
    for step in (1, 2):
        store.save_checkpoint(dict(state, step=step), keep=3)
    before = {p.name: p.read_bytes() for p in store.checkpoint_paths()}
    full = disk(lambda name: name.startswith(".ckpt-00000003"))
    with pytest.raises(OSError) as caught:  # not torch's "unexpected pos" RuntimeError
        store.save_checkpoint(dict(state, step=3), keep=3)
    assert caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(store.checkpoints / "ckpt-00000003.pt")
    assert {p.name: p.read_bytes() for p in store.checkpoint_paths()} == before
    assert no_temp_files(store.path) and full.refused
    full.free()
    assert store.save_checkpoint(dict(state, step=3), keep=3).name == "ckpt-00000003.pt"


def test_a_journal_record_that_does_not_fit_is_cut_off_again(tmp_path, disk) -> None:
    store = RunStore.create(tmp_path, "r", {})
    store.append_metrics({"step": 1, "note": "x" * 200})
    full = disk(lambda name: name == "metrics.jsonl", sticky=False)
    store.close()
    with pytest.raises(OSError, match=FULL) as caught:
        store.append_metrics({"step": 2, "note": "y" * 200})
    assert caught.value.filename.endswith("metrics.jsonl")
    full.free()
    store.append_metrics({"step": 3})
    store.close()
    assert [r["step"] for r in store.metrics()] == [1, 3]
    assert every_line_parses(store.path / "metrics.jsonl")  # no half line glued on


# ---- the trainer ----------------------------------------------------------------------------

def test_headless_a_full_disk_stops_with_the_file_the_free_space_and_the_resume_line(
        runs_dir: Path, disk) -> None:
    full = disk(lambda name: name.startswith(".ckpt-00000090"))  # then nothing fits
    cfg = tiny("ring-8", "steps=150", "checkpoint_every=30", "keep_checkpoints=10")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    events = follow(session, 60)
    assert not session.error and session.state == "error"
    run = session.run_dir
    failure = session.trainer.write_failure
    assert failure is not None and failure.startswith(
        f"{FULL} while writing checkpoints/ckpt-00000090.pt (")
    assert failure.endswith(" MB free); the last good checkpoint is "
                            "checkpoints/ckpt-00000060.pt"), failure
    assert any(a == f"{failure}; stopping" for a in alerts(events))
    out = io.StringIO()
    assert finish(session, LinePrinter(out)) == 1
    assert f"free some space, then resume with: gantui train --resume {run}" in out.getvalue()
    store = RunStore.open(run)
    assert [load_checkpoint_file(p)["step"] for p in store.checkpoint_paths()] == [30, 60]
    assert no_temp_files(run) and every_line_parses(run / "metrics.jsonl")
    assert len(full.refused) > 1  # journals and samples found the disk full too: no crash
    full.free()
    resumed = start(None, "", resume=run, device="cpu")
    follow(resumed, 60)
    assert resumed.state == "finished" and not resumed.error
    assert [p.name for p in store.checkpoint_paths()][-1] == "ckpt-00000150.pt"
    assert [r["step"] for r in store.metrics()] == list(range(10, 151, 10))


def test_in_the_dashboard_a_full_disk_pauses_until_there_is_room(runs_dir: Path, disk) -> None:
    full = disk(lambda name: name.startswith(".ckpt-00000060"))
    cfg = tiny("ring-8", "steps=100000", "checkpoint_every=30")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu", on_nonfinite="pause")
    seen: list = []
    wait_until(session, lambda: session.state == "paused", seen)
    assert session.trainer.step == 60
    warning = [a for a in alerts(seen) if a.startswith(f"{FULL} while writing "
                                                       "checkpoints/ckpt-00000060.pt (")]
    assert warning and warning[0].endswith("; the last good checkpoint is checkpoints/"
                                           "ckpt-00000030.pt; paused: free some space, then "
                                           "press c to checkpoint or p to resume")
    with pytest.raises(Exception, match="the run stays paused"):  # `c` on a disk still full
        session.controller.checkpoint().result(timeout=30)
    assert session.state == "paused"
    full.free()
    written = session.controller.checkpoint().result(timeout=30)  # `c` once there is room
    assert Path(written["path"]).name == "ckpt-00000060.pt"
    full.fills_at = lambda name: name.startswith(".ckpt-00000120")
    session.controller.resume().result(timeout=30)
    wait_until(session, lambda: session.state == "paused" and session.trainer.step == 120, seen)
    full.free()
    session.controller.resume().result(timeout=30)  # no `c`: resuming writes it
    store = RunStore.open(session.run_dir)
    wait_until(session, lambda: any(p.name == "ckpt-00000150.pt"
                                    for p in store.checkpoint_paths()), seen)
    session.controller.stop()
    session.join(30)
    assert session.state == "stopped" and not session.error
    names = [p.name for p in store.checkpoint_paths()]
    assert "ckpt-00000120.pt" in names and names[-1] >= "ckpt-00000150.pt"


@pytest.mark.parametrize("what", ["samples", "metrics.jsonl", "events.jsonl"])
def test_a_sample_or_journal_that_cannot_be_written_is_one_warning(runs_dir: Path, disk,
                                                                   what: str) -> None:
    def fills(name: str) -> bool:
        return name.startswith(".step-") if what == "samples" else name == what

    full = disk(fills, sticky=False)
    cfg = tiny("ring-8", "steps=120", "sample_every=20", "log_every=10")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    events = follow(session, 60)
    assert session.state == "finished" and not session.error
    shown = "samples/step-00000020.png" if what == "samples" else what
    said = [a for a in alerts(events) if a.startswith(f"{FULL} while writing ")]
    assert len(said) == 1 and shown in said[0] and "training continues" in said[0], said
    assert len(full.refused) > 3  # it failed at every write, and was said once
    run = session.run_dir
    assert [p.name for p in RunStore.open(run).checkpoint_paths()][-1] == "ckpt-00000120.pt"
    assert no_temp_files(run)
    if what != "samples":
        path = run / what
        assert not path.exists() or every_line_parses(path)


def test_low_free_space_is_a_warning_once(runs_dir: Path, monkeypatch) -> None:
    monkeypatch.setattr(ckpt, "free_bytes", lambda path: 1000)
    cfg = tiny("ring-8", "steps=120", "checkpoint_every=30")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    events = follow(session, 60)
    low = [e for e in events if isinstance(e, ev.Alert) and e.kind == "disk"]
    assert session.state == "finished" and len(low) == 1
    assert low[0].message.startswith("0.0 MB free on the disk of") and "room for 0 more" in \
        low[0].message


# ---- defect 6: a checkpoint of another run --------------------------------------------------

def test_a_foreign_checkpoint_is_never_overwritten_nor_pruned(runs_dir: Path) -> None:
    base = ("steps=60", "checkpoint_every=30")
    run = start(tiny("ring-8", *base), "ring-8", runs_dir=runs_dir, name="r", device="cpu")
    other = start(tiny("ring-8", *base, "g_hidden=48,48"), "ring-8", runs_dir=runs_dir,
                  name="other", device="cpu")
    follow(run, 60)
    follow(other, 60)
    theirs = RunStore.open(other.run_dir).checkpoint_paths()[-1].read_bytes()
    checkpoints = run.run_dir / "checkpoints"
    for step in (90, 10):  # one in the run's future, one older than any of its own
        (checkpoints / f"ckpt-{step:08d}.pt").write_bytes(theirs)
    resumed = start(None, "", resume=run.run_dir, sets=["steps=150"], device="cpu")
    events = follow(resumed, 60)
    assert resumed.state == "finished" and not resumed.error
    said = alerts(events)
    assert any("ckpt-00000090.pt cannot be used: it belongs to another run" in a for a in said)
    assert any("ckpt-00000090.pt was not written by this run" in a
               and "moved it aside to ckpt-00000090.pt.foreign" in a for a in said), said
    assert (checkpoints / "ckpt-00000090.pt.foreign").read_bytes() == theirs
    assert (checkpoints / "ckpt-00000010.pt").read_bytes() == theirs  # never pruned
    names = [p.name for p in RunStore.open(run.run_dir).checkpoint_paths()]
    assert names == ["ckpt-00000010.pt", "ckpt-00000090.pt", "ckpt-00000120.pt",
                     "ckpt-00000150.pt"]  # its own pruned to keep_checkpoints=3
    assert load_checkpoint_file(checkpoints / "ckpt-00000090.pt")["config"]["g_hidden"] == \
        [32, 32]


# ---- issue 20: one list of fields ----------------------------------------------------------

def test_save_and_load_walk_one_list_that_agrees_with_the_store(runs_dir: Path) -> None:
    cfg = tiny("ring-8", "steps=30", "checkpoint_every=30")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    follow(session, 60)
    state = ckpt.save(session.trainer)
    assert list(state) == [f.name for f in ckpt.FIELDS if f.capture is not None]
    assert set(store_mod.CHECKPOINT_KEYS) <= set(state)
    assert state["version"] == ckpt.VERSION == store_mod.CHECKPOINT_VERSION
    on_disk = load_checkpoint_file(RunStore.open(session.run_dir).checkpoint_paths()[-1])
    assert set(on_disk) == set(state)
    with pytest.raises(Exception, match="version"):
        ckpt.load(session.trainer, dict(state, version=ckpt.VERSION + 1))


# ---- a real full disk: tmpfs and the CLI ----------------------------------------------------

@pytest.fixture
def small_disk(tmp_path: Path):
    """A 256 KB tmpfs (root only; skipped where mounting is not allowed)."""
    where = tmp_path / "disk"
    where.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command here")
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip() or 'not root'})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_a_real_full_disk_through_the_cli(small_disk: Path) -> None:
    tiny_sets = ["--set", "g_hidden=32,32", "--set", "d_hidden=32,32", "--set", "batch_size=64",
                 "--set", "log_every=10", "--set", "sample_every=20", "--set",
                 "checkpoint_every=10", "--set", "keep_checkpoints=1000"]
    out = cli("train", "--preset", "ring-8", "--runs-dir", str(small_disk), "--name", "r",
              "--no-ui", "--set", "steps=100000", *tiny_sets, cwd=small_disk)
    run = small_disk / "r"
    assert out.returncode == 1 and "Traceback" not in out.stderr + out.stdout, out.stderr
    stop = [line for line in out.stdout.splitlines() if "; stopping" in line]
    assert len(stop) == 1, out.stdout
    assert f"WARNING {FULL} while writing checkpoints/ckpt-" in stop[0]
    assert " MB free); the last good checkpoint is checkpoints/ckpt-" in stop[0]
    assert f"free some space, then resume with: gantui train --resume {run}" in out.stdout
    paths = RunStore.open(run).checkpoint_paths()
    steps = [load_checkpoint_file(p)["step"] for p in paths]  # every one whole
    assert steps == list(range(10, 10 * len(steps) + 1, 10)) and len(steps) >= 2
    assert no_temp_files(run)
    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)
    more = cli("train", "--resume", str(run), "--set", f"steps={steps[-1] + 20}", cwd=small_disk)
    assert more.returncode == 0, more.stdout + more.stderr
    assert f"resuming from {paths[-1]} at step {steps[-1]}" in more.stdout
    assert load_checkpoint_file(RunStore.open(run).checkpoint_paths()[-1])["step"] == \
        steps[-1] + 20
