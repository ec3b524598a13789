"""``gantui run SCRIPT``: the dashboard in a real pseudo-terminal, a launcher that dies however
it dies, signals the script handles itself, two scripts on one run, and ``ctl set`` listing a
script's live values. A torch-free toy script keeps the processes cheap; the pty test runs the
real classifier example at toy size."""

from __future__ import annotations

import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from gantui.run.lock import is_locked
from gantui.run.runs import read_run
from gantui.run.store import RunStore

from .conftest import cli, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

TOY = textwrap.dedent('''\
    """A loop that uses gantui.api without torch (a test's script)."""
    import argparse
    import signal
    import time

    import gantui.api as gantui

    parser = argparse.ArgumentParser()
    parser.add_argument("--name", required=True)
    parser.add_argument("--steps", type=int, default=10**9)
    parser.add_argument("--raise-at", type=int, default=-1)
    parser.add_argument("--own-sigterm", action="store_true")
    parser.add_argument("--resume", action="store_true")
    args = parser.parse_args()
    own = []
    if args.own_sigterm:  # the script's own handler: gantui leaves SIGTERM to it
        signal.signal(signal.SIGTERM, lambda signum, frame: own.append(signum))
    run = gantui.init({"steps": args.steps}, name=args.name, runs_dir="runs", log_every=5,
                      resume=args.resume, system=False)
    run.live("lr", 0.1, low=1e-6, high=1.0)
    run.live("mode", "fast", choices=("fast", "slow"))
    run.on_checkpoint(lambda path: path.write_bytes(b"toy state"))
    with run:
        for step in range(args.steps):
            if not run.step(step) or own:
                break
            if step == args.raise_at:
                raise ZeroDivisionError("the toy divides by zero")
            run.log(step + 1, loss=1.0 / (step + 1))
            time.sleep(0.01)
    if own:
        print(f"own SIGTERM handler ran; gantui recorded {run.state}", flush=True)
    ''')


def toy(tmp_path: Path) -> Path:
    script = tmp_path / "toy.py"
    script.write_text(TOY)
    return script


def state_of(run_dir: Path) -> str:
    info = read_run(run_dir, is_live=is_locked)
    return info.state if info is not None else "none"


def owner_pid(run_dir: Path) -> int:
    return int(RunStore.open(run_dir).owner()["pid"])


def gone(pid: int) -> bool:
    """No process ``pid`` runs (a zombie nobody reaps does not count)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def started(tmp_path: Path, proc: subprocess.Popen, run_dir: Path, out: Path) -> None:
    """The script has a live run with metrics on disk."""
    wait_until(lambda: (run_dir / "metrics.jsonl").exists() or proc.poll() is not None, 60,
               "the script's first metrics")
    assert proc.poll() is None, out.read_text() if out.exists() else ""


@pytest.mark.slow  # gantui run in a pseudo-terminal
def test_the_dashboard_in_a_terminal_draws_and_q_then_s_stops_the_script(
        tmp_path: Path) -> None:
    """``gantui run examples/classifier.py`` in a real pty: the dashboard draws the script's
    run; q offers stop or detach; s stops it after a checkpoint; nothing is left running."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    env = {**ENV, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40",
           "GANTUI_GRAPHICS": "halfblock"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "gantui", "run", str(EXAMPLES / "classifier.py"), "--steps",
         "1000000", "--batch-size", "8", "--eval-every", "1000000", "--name", "pty"],
        cwd=tmp_path, stdin=slave, stdout=slave, stderr=slave, env=env,
        start_new_session=True)
    os.close(slave)
    run_dir = tmp_path / "runs" / "pty"
    output = bytearray()

    def read_until(condition: Callable[[], object], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out waiting for {what}: " + \
                output[-2000:].decode(errors="replace")
            if select.select([master], [], [], 0.1)[0]:
                try:
                    output.extend(os.read(master, 65536))
                except OSError:  # the program is gone
                    return

    try:
        read_until(lambda: b"\x1b[?1049h" in output and len(output) > 20_000
                   and (run_dir / "metrics.jsonl").exists(), 90, "the dashboard")
        read_until(lambda: b"classifier.py" in output, 10, "the script's name in the title")
        script_pid = owner_pid(run_dir)
        assert psutil.Process(script_pid).ppid() == proc.pid  # the script is our child
        os.write(master, b"q")
        mark = len(output)
        read_until(lambda: b"Checkpoint and stop" in output[mark:], 20, "the quit choice")
        assert b"Keep training" in output[mark:]
        os.write(master, b"s")
        read_until(lambda: proc.poll() is not None, 30, "the launcher to end")
        while select.select([master], [], [], 0.2)[0]:  # what it wrote last
            try:
                output.extend(os.read(master, 65536))
            except OSError:
                break
        assert proc.wait(5) == 0
        assert state_of(run_dir) == "stopped"
        journal = RunStore.open(run_dir).events()
        assert "stop requested by ui" in " ".join(r.get("message", "") for r in journal)
        assert RunStore.open(run_dir).checkpoint_paths()
        assert gone(script_pid) and not is_locked(run_dir)
        # the script's last lines come back on the terminal once the dashboard has closed
        tail = output.split(b"\x1b[?1049l")[-1].decode(errors="replace")
        assert "stopped at step" in tail, tail
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)


def test_a_launcher_killed_by_sigkill_ends_its_script(tmp_path: Path) -> None:
    """The lifeline: the launcher dies without a chance to say so; the script notices, stops
    at its next step boundary after a checkpoint, is recorded stopped, and removes the
    launcher's temporary folder (no gantui-run-* left in /tmp)."""
    script, out = toy(tmp_path), tmp_path / "orphan.out"
    temp = tmp_path / "tmp"  # where the launcher makes its temporary folder
    temp.mkdir()
    with open(out, "w") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "gantui", "run", str(script), "--name",
                                 "orphan", "--no-ui"], cwd=tmp_path,
                                env={**ENV, "TMPDIR": str(temp)}, stdout=sink,
                                stderr=subprocess.STDOUT)
    run_dir = tmp_path / "runs" / "orphan"
    try:
        started(tmp_path, proc, run_dir, out)
        script_pid = owner_pid(run_dir)
        assert [p.name[:11] for p in temp.iterdir()] == ["gantui-run-"]
        proc.kill()
        proc.wait(10)
        wait_until(lambda: gone(script_pid), 20, "the orphaned script to end")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not list(temp.iterdir())  # the script removed what the killed launcher left
    assert state_of(run_dir) == "stopped"
    notes = " ".join(r.get("message", "") for r in RunStore.open(run_dir).events())
    assert "SIGTERM: writing a checkpoint, then stopping" in notes
    assert RunStore.open(run_dir).checkpoint_paths() and not is_locked(run_dir)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_a_plain_script_and_its_own_sigterm_handler_is_left_alone(
        tmp_path: Path) -> None:
    """``python SCRIPT``: Ctrl-C (SIGINT) stops at the next boundary after a checkpoint; a
    script that set its own SIGTERM handler gets SIGTERM itself, and ends as it chooses."""
    script = toy(tmp_path)
    # Ctrl-C at its default, as from a terminal, even where the tests were started with SIGINT
    # ignored (a background job: a script that inherits SIG_IGN rightly keeps it)
    procs = {name: subprocess.Popen([sys.executable, str(script), "--name", name, *extra],
                                    cwd=tmp_path, env=ENV, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True,
                                    preexec_fn=_default_sigint)
             for name, extra in (("ctrl-c", []), ("own", ["--own-sigterm"]))}
    try:
        for name, proc in procs.items():
            wait_until(lambda p=proc, n=name: (tmp_path / "runs" / n / "metrics.jsonl")
                       .exists() or p.poll() is not None, 60, f"{name} to start")
        procs["ctrl-c"].send_signal(signal.SIGINT)
        procs["own"].send_signal(signal.SIGTERM)
        outputs = {name: proc.communicate(timeout=30)[0] for name, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
    assert procs["ctrl-c"].returncode == 0, outputs["ctrl-c"]
    assert state_of(tmp_path / "runs" / "ctrl-c") == "stopped"
    assert "SIGINT: writing a checkpoint, then stopping" in outputs["ctrl-c"]
    assert RunStore.open(tmp_path / "runs" / "ctrl-c").checkpoint_paths()
    # the script's handler ran and its loop ended on its own terms: finished, not stopped
    assert procs["own"].returncode == 0, outputs["own"]
    assert "own SIGTERM handler ran; gantui recorded finished" in outputs["own"]
    assert "SIGTERM" not in outputs["own"].replace("own SIGTERM handler", "")
    assert state_of(tmp_path / "runs" / "own") == "finished"


def test_a_script_that_raises_under_gantui_run_reads_as_error(tmp_path: Path) -> None:
    """Its own traceback (no gantui frames around it), exit 1, the run recorded as error."""
    script = toy(tmp_path)
    out = cli("run", str(script), "--name", "boom", "--steps", "50", "--raise-at", "7",
              "--no-ui", cwd=tmp_path)
    assert out.returncode == 1
    assert "ZeroDivisionError: the toy divides by zero" in out.stdout
    assert 'File "' + str(script) in out.stdout
    assert "runpy" not in out.stdout and "gantui/runner.py" not in out.stdout
    run_dir = tmp_path / "runs" / "boom"
    assert state_of(run_dir) == "error"
    assert RunStore.open(run_dir).metrics()[-1]["step"] == 7  # what was logged is kept


def test_two_scripts_on_one_run_and_ctl_set_lists_the_scripts_live_values(
        tmp_path: Path) -> None:
    """A second script that opens a live run's directory is refused in one line and the
    first trains on; ``ctl RUN set`` alone lists the script's live values with their
    types and bounds."""
    script, out = toy(tmp_path), tmp_path / "first.out"
    with open(out, "w") as sink:
        first = subprocess.Popen([sys.executable, str(script), "--name", "shared"],
                                 cwd=tmp_path, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
    run_dir = tmp_path / "runs" / "shared"
    try:
        started(tmp_path, first, run_dir, out)
        second = cli("run", str(script), "--name", "shared", "--resume", "--no-ui",
                     cwd=tmp_path)
        assert second.returncode == 1
        refusal = "gantui: toy.py: runs/shared is being trained by a live process"
        assert refusal in second.stdout and "Traceback" not in second.stdout, second.stdout
        fresh = cli("run", str(script), "--name", "shared", "--no-ui", cwd=tmp_path)
        assert fresh.returncode == 1 and "already exists; continue it with resume=True" in \
            fresh.stdout and "Traceback" not in fresh.stdout

        listing = cli("ctl", str(run_dir), "set", cwd=tmp_path)
        assert listing.returncode == 1
        assert ("live keys: lr (float in [1e-06, 1]), mode (one of fast, slow)"
                in listing.stderr), listing.stderr
        stop = cli("ctl", str(run_dir), "stop", cwd=tmp_path)
        assert stop.returncode == 0 and "stopped at step" in stop.stdout, stop.stderr
        assert first.wait(30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert state_of(run_dir) == "stopped"
    starts = [r for r in RunStore.open(run_dir).events() if r["event"] == "start"]
    assert len(starts) == 1  # the refused scripts wrote nothing into it


def test_a_script_that_logs_plain_numbers_starts_without_torch() -> None:
    """gantui.api loads torch only to read tensors, save images or checkpoints with it."""
    code = "import sys, gantui.api; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env=ENV)
    assert out.stdout.strip() == "False"


def test_a_launchers_wait_gives_a_stopping_child_its_grace() -> None:
    """A stop signal that lands while the launcher waits: the child gets its grace to finish
    (here it takes half a second after SIGTERM) instead of a SIGKILL at the next poll."""
    from gantui import procs as procs_mod

    code = ("import signal, sys, time\n"
            "signal.signal(signal.SIGTERM, lambda *a: (time.sleep(0.5), sys.exit(7)))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n")
    child = procs_mod.Child([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline() == "ready\n"
    signalled: list[int] = []

    def stop() -> None:  # what a launcher's signal handler does, mid-wait
        signalled.append(signal.SIGTERM)
        child.send_signal(signal.SIGTERM)

    timer = threading.Timer(0.3, stop)
    timer.start()
    try:
        assert procs_mod.wait_after_stop(child, signalled, grace=30) == 7
    finally:
        timer.cancel()
        child.end(0, signal.SIGKILL)


def test_a_guarded_module_gets_a_scratch_folder_that_goes_with_it(tmp_path: Path) -> None:
    """torchrun's way in (``gantui.procs.guarded``): the module is handed a temporary folder
    through the named option and the folder is removed when the module ends, also when it
    fails; the module's exit code comes through."""
    from gantui import procs as procs_mod

    (tmp_path / "showargs.py").write_text(textwrap.dedent('''\
        import os, sys
        folder = sys.argv[1].partition("=")[2]
        print(sys.argv[1].partition("=")[0], os.path.isdir(folder), folder, sys.argv[2:])
        sys.exit(3)
    '''))
    temp = tmp_path / "tmp"
    temp.mkdir()
    out = subprocess.run(procs_mod.guarded("showargs", ["a", "--b"], scratch_option="--log-dir"),
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**ENV, "TMPDIR": str(temp), "PYTHONPATH": str(tmp_path)})
    option, existed, folder, rest = out.stdout.split(" ", 3)
    assert out.returncode == 3, out.stderr
    assert (option, existed, rest.strip()) == ("--log-dir", "True", "['a', '--b']")
    assert Path(folder).parent == temp and Path(folder).name.startswith("gantui-scratch-")
    assert not list(temp.iterdir())
