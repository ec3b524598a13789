"""Launchers end their children: ``gantui bench``, ``gantui sweep`` and the torchrun launcher
``gantui train --nproc-per-node 2``, stopped by SIGTERM, SIGINT or SIGKILL, leave no process
behind, print no traceback, and lose nothing already written; SIGHUP (a dropped connection)
stops the bench, and leaves a sweep or a launch training.

Real launches at toy size (ring-8 with tiny MLPs on the CPU), one at a time. A launcher is
started, the test waits until its children exist, signals the launcher alone (never its
group), then follows every descendant it has seen (also ones started after the signal)
until all are gone. SIGKILL cannot be caught: there the children must notice by themselves.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow  # launchers signalled with their children running

BOUND_S = 15.0
"""How long after the signal every descendant must be gone."""
START_S = 120.0
"""How long a launcher may take to start the children the test waits for."""
TINY_SETS = ["g_hidden=32,32", "d_hidden=32,32", "batch_size=64", "log_every=10",
             "sample_every=1000", "eval_every=0"]
TINY = [*(item for s in TINY_SETS for item in ("--set", s)), "--device", "cpu"]


# ---- following a process tree --------------------------------------------------------------

def _live(proc: psutil.Process) -> bool:
    """Running and not a zombie (an orphan's zombie here may never be reaped by PID 1)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _descendants(procs: set[psutil.Process]) -> set[psutil.Process]:
    found: set[psutil.Process] = set()
    for proc in procs:
        try:
            found.update(proc.children(recursive=True))
        except psutil.NoSuchProcess:
            continue
    return found


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())
    except psutil.Error:
        return ""


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """``gantui ARGS`` in ``cwd``, its output in ``log``, its temporary files in ``cwd``."""
    with log.open("wb") as fh:
        return subprocess.Popen([sys.executable, "-m", "gantui", *args], cwd=cwd, stdout=fh,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "TMPDIR": str(cwd)})


def _wait_for(launcher: subprocess.Popen, log: Path, ready: Callable[[], bool],
              what: str) -> None:
    deadline = time.monotonic() + START_S
    while not ready():
        if launcher.poll() is not None or time.monotonic() > deadline:
            _kill_tree(launcher)
            pytest.fail(f"never saw {what}; launcher exit {launcher.poll()}:\n"
                        f"{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.1)


def _kill_tree(launcher: subprocess.Popen) -> None:
    """Clean up after a failure: nothing of a launch may outlive its test."""
    root = psutil.Process(launcher.pid)
    for proc in [*_descendants({root}), root]:
        try:
            proc.kill()
        except psutil.Error:
            continue
    launcher.wait(10)


def _children_named(launcher: subprocess.Popen, needle: str) -> list[psutil.Process]:
    root = psutil.Process(launcher.pid)
    return [p for p in _descendants({root}) if _live(p) and needle in _cmdline(p)]


def _ranks(launcher: subprocess.Popen) -> list[psutil.Process]:
    """The torchrun workers below ``launcher`` (torchrun gives each a LOCAL_RANK)."""
    out = []
    for proc in _descendants({psutil.Process(launcher.pid)}):
        try:
            if "LOCAL_RANK" in proc.environ() and _live(proc):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def _signal_and_follow(launcher: subprocess.Popen, sig: signal.Signals, log: Path) -> float:
    """Send ``sig`` to the launcher alone; returns how long every process took to be gone.

    Fails naming the survivors (and kills them) when any is still there after BOUND_S."""
    root = psutil.Process(launcher.pid)
    seen = {root, *_descendants({root})}
    assert len(seen) > 1, "the launcher has no children to end"
    os.kill(launcher.pid, sig)
    started = time.monotonic()
    while time.monotonic() - started < BOUND_S:
        launcher.poll()  # reap the launcher itself (its zombie is ours)
        seen |= _descendants({p for p in seen if _live(p)})  # also ones started since
        if not any(_live(p) for p in seen):
            took = time.monotonic() - started
            # it may have become a zombie after the poll above: reap it, so returncode is set
            launcher.wait(10)
            print(f"{sig.name}: {len(seen) - 1} descendant(s) and the launcher gone in "
                  f"{took:.1f} s")
            return took
        time.sleep(0.1)
    survivors = [f"{p.pid} {_cmdline(p)[:160]}" for p in seen if _live(p)]
    for proc in seen:
        if _live(proc):
            proc.kill()
    launcher.wait(10)
    pytest.fail(f"{sig.name}: still running {BOUND_S:.0f} s later: {survivors}\n"
                f"{log.read_text(errors='replace')[-2000:]}")


def _hang_up_and_check_it_goes_on(launcher: subprocess.Popen, log: Path,
                                   newest: Callable[[], int]) -> None:
    """SIGHUP (a dropped connection) takes only the terminal: the launcher and its children
    stay, and training goes on (``newest()``, the newest checkpoint's step, grows)."""
    before = newest()
    root = psutil.Process(launcher.pid)
    children = _descendants({root})
    os.kill(launcher.pid, signal.SIGHUP)
    _wait_for(launcher, log, lambda: newest() > before, "training go on after SIGHUP")
    assert launcher.poll() is None
    assert all(_live(p) for p in children), [_cmdline(p)[:120] for p in children if not _live(p)]


def _newest_step(*dirs: Path) -> Callable[[], int]:
    def newest() -> int:
        steps = [int(p.stem.split("-")[1]) for d in dirs for p in d.glob("ckpt-*.pt")]
        return min(steps, default=0) if len(dirs) > 1 else max(steps, default=0)
    return newest


def _no_traceback(log: Path) -> str:
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    return text


# ---- gantui bench ---------------------------------------------------------------------------

BENCH = ["bench", "--preset", "ring-8", "--rounds", "1", *TINY]


@pytest.mark.parametrize(("sig", "child"), [
    (signal.SIGKILL, "headless-0"),  # the report: a measured run went on after the bench
    (signal.SIGHUP, "dashboard-0"),  # a session and pseudo-terminal of its own
    (signal.SIGTERM, "gantui.perf.bare"),
    (signal.SIGINT, "gantui.perf.bare"),
])
def test_bench_ends_its_children(tmp_path: Path, sig: signal.Signals, child: str) -> None:
    """The signal reaches the bench while ``child`` runs: it is ended, and nothing after it
    starts. A measured run is paused first: left alone, it would never end by itself."""
    from gantui.remote import request

    # a measured run is the only mode: it starts at once and runs until signalled
    steps, modes = ("1000000", "bare") if child == "gantui.perf.bare" else (
        "1000", child.split("-")[0])
    log = tmp_path / "bench.log"
    launcher = _start([*BENCH, "--steps", steps, "--modes", modes], tmp_path, log)
    _wait_for(launcher, log, lambda: bool(_children_named(launcher, child)), child)
    if child != "gantui.perf.bare":
        _wait_for(launcher, log, lambda: bool(list(
            tmp_path.glob(f"gantui-bench-*/runs/{child}/control.sock"))), f"{child} training")
        run_dir = next(tmp_path.glob(f"gantui-bench-*/runs/{child}"))
        assert request(run_dir, {"action": "pause", "source": "test"})["action"] == "pause"
    _signal_and_follow(launcher, sig, log)
    if sig != signal.SIGKILL:
        assert launcher.returncode == 128 + sig, log.read_text()[-2000:]
        assert "stopped" in _no_traceback(log)
        assert not list(tmp_path.glob("gantui-bench-*"))  # its temporary folder went with it
    else:  # the orphaned run stopped itself (it did not crash, nor need a SIGKILL)
        from gantui.files import read_jsonl

        states = [r["state"] for r in read_jsonl(run_dir / "events.jsonl")
                  if r.get("event") == "state"]
        assert states[-1:] == ["stopped"], states


# ---- gantui sweep ---------------------------------------------------------------------------

SWEEP_SETS = ["steps=1000000", "checkpoint_every=20", *TINY_SETS]


def _sweep(tmp_path: Path) -> list[str]:
    return ["sweep", "--preset", "ring-8", "--vary", "pack=1,2", "--parallel", "2",
            *[a for s in SWEEP_SETS for a in ("--set", s)], "--device", "cpu",
            "--runs-dir", str(tmp_path / "runs"), "--name", "s"]


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_sweep_ends_its_children_and_stays_resumable(tmp_path: Path,
                                                     sig: signal.Signals) -> None:
    """Both runs under way, each past a checkpoint: after the signal no child is left, every
    checkpoint loads, and the same sweep plans to resume both runs. Before SIGTERM, a SIGHUP
    (the terminal gone) leaves the sweep training."""
    import torch

    from gantui.studies import sweep as sweep_mod

    sweep_dir = tmp_path / "runs" / "s"
    log = tmp_path / "sweep.log"
    launcher = _start(_sweep(tmp_path), tmp_path, log)
    names = ("pack=1-seed=0", "pack=2-seed=0")
    _wait_for(launcher, log, lambda: all(
        list((sweep_dir / n / "checkpoints").glob("ckpt-*.pt")) for n in names),
        "a checkpoint of both runs")
    if sig == signal.SIGTERM:
        _hang_up_and_check_it_goes_on(launcher, log, _newest_step(
            *(sweep_dir / n / "checkpoints" for n in names)))
    _signal_and_follow(launcher, sig, log)
    if sig != signal.SIGKILL:
        launcher.wait(10)  # gone, perhaps not yet reaped
        assert launcher.returncode == 130, log.read_text()[-2000:]
        # after the hang-up its lines go nowhere: what the log holds is from before it
        assert "pack=2-seed=0: started" in _no_traceback(log)
    for name in names:
        for path in (sweep_dir / name / "checkpoints").glob("ckpt-*.pt"):
            assert "G" in torch.load(path, map_location="cpu", weights_only=True), path
        assert "Traceback" not in (sweep_dir / "logs" / f"{name}.log").read_text()
    plan = sweep_mod.plan("ring-8", ["pack=1,2"], 1, SWEEP_SETS, "s", tmp_path / "runs")
    runner = sweep_mod.Sweep(plan, parallel=2, device="cpu", say=lambda _line: None)
    runner.claim()  # the same sweep, no run still locked by a live process
    todo = runner._todo()
    assert [name for name, _ in todo] == list(names)
    assert all(args[0] == "--resume" for _, args in todo), todo


# ---- gantui train --nproc-per-node 2 --------------------------------------------------------

# SIGTERM takes the same path as SIGINT (procs.on_stop_signals); test_distributed stops a
# launch with SIGTERM and resumes it bit-exactly
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_torchrun_launcher_ends_every_rank(tmp_path: Path, sig: signal.Signals) -> None:
    """torchrun runs in a session of its own below the launcher: the signal to the launcher
    ends torchrun and both ranks, after a checkpoint that stays loadable, and nothing is left
    in the temporary folder. Before SIGINT, a SIGHUP (the terminal gone) leaves the launch
    training, as it leaves a single process."""
    import torch

    run_dir = tmp_path / "runs" / "T"
    log = tmp_path / "launch.log"
    launcher = _start(["train", "--nproc-per-node", "2", "--no-ui", "--preset", "ring-8",
                       *TINY, "--set", "steps=1000000", "--set", "checkpoint_every=20",
                       "--runs-dir", str(tmp_path / "runs"), "--name", "T"], tmp_path, log)
    _wait_for(launcher, log, lambda: bool(list((run_dir / "checkpoints").glob("ckpt-*.pt")))
              and len(_ranks(launcher)) == 2, "two ranks training")
    if sig == signal.SIGINT:
        _hang_up_and_check_it_goes_on(launcher, log, _newest_step(run_dir / "checkpoints"))
    _signal_and_follow(launcher, sig, log)
    if sig != signal.SIGKILL:
        launcher.wait(10)  # gone, perhaps not yet reaped
        assert launcher.returncode == 0, log.read_text()[-2000:]
        _no_traceback(log)
    for path in (run_dir / "checkpoints").glob("ckpt-*.pt"):
        assert torch.load(path, map_location="cpu", weights_only=True)["world_size"] == 2
    # torchrun's log folder (TMPDIR is tmp_path) went with it, even after a SIGKILL
    assert not list(tmp_path.glob("torchelastic_*")) + list(tmp_path.glob("gantui-scratch-*"))
