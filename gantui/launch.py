"""``gantui train`` on several processes: each rank of a torchrun launch, and the launcher
``gantui train --nproc-per-node N`` that starts torchrun itself and follows the run.

Rank 0 trains with the headless printer and owns the run directory; the other ranks train
in silence (errors only). The launcher runs ``python -m torch.distributed.run`` in its own
session (a dropped terminal does not reach it), shows rank 0's lines or the dashboard
(following the run directory, as ``gantui watch`` does), hides torchrun's own log lines and
tracebacks, and sums up a failed launch in one line. torchrun holds a lifeline to the
launcher (:mod:`gantui.procs`): whenever the launcher ends, by any signal or SIGKILL, the
ranks stop after a checkpoint, unless the dashboard left the run in the background.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from gantui import procs
from gantui.errors import PEER_LOST_EXIT, GantuiError
from gantui.text import safe


def launched_world_size() -> int:
    """The world size torchrun set for this process (1 outside a launch); torch-free."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


# ---- one rank of a launch ----------------------------------------------------------------

def train_rank(load_config: Callable[[], tuple[str, object]] | None, *, resume: Path | None,
               sets: list[str], device: str, runs_dir: Path, name: str | None) -> int:
    """Train this rank of a torchrun launch; returns the exit code.

    Args:
        load_config: ``() -> (preset name, Config)`` for a new run (None when resuming);
            called on rank 0 only, which sends the result to the others.
    """
    from gantui.engine import distributed

    world = distributed.launched()
    try:
        torch_device, channel = distributed.init(world, device)
    except GantuiError as exc:
        _say(world.rank, str(exc))
        return 1
    except (RuntimeError, ValueError) as exc:  # no rendezvous, a port in use...
        _say(world.rank, f"could not join the launch: {safe(exc, 200)}")
        return 1
    try:
        if world.main:
            return _train_main(load_config, world, channel, torch_device, resume, sets, device,
                               runs_dir, name)
        return _train_other(world, channel, torch_device)
    finally:
        distributed.close()


def rank_main(load_config: Callable[[], tuple[str, object]] | None, *, resume: Path | None,
              sets: list[str], device: str, runs_dir: Path, name: str | None) -> NoReturn:
    """:func:`train_rank`, then :func:`leave_rank` with its exit code."""
    leave_rank(train_rank(load_config, resume=resume, sets=sets, device=device,
                          runs_dir=runs_dir, name=name))


def leave_rank(code: int) -> NoReturn:
    """End a rank's process now, without the interpreter's teardown.

    DDP keeps gloo's worker threads alive past ``destroy_process_group`` (no Python object
    holds them, so no collection frees them), and the interpreter's teardown then runs
    beside them. A finished rank was seen to abort there now and then (``terminate called
    without an active exception``, SIGABRT, after its last step), which turned a finished
    launch into a failed one. By now the trainer has closed its data workers, rank 0 its
    run directory and every rank its process group; only the output buffers are left.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


def _train_main(load_config, world, channel, torch_device, resume, sets, device, runs_dir,
                name) -> int:
    from gantui.engine.distributed import RankFailed
    from gantui.headless import run_headless
    from gantui.session import start

    try:
        if resume is not None:
            session = start(None, "", resume=resume, sets=sets, device=device, world=world,
                            channel=channel, torch_device=torch_device)
        else:
            try:
                preset, cfg = load_config()
            except BaseException as exc:
                channel.send_setup({"error": str(exc)})
                raise
            session = start(cfg, preset, runs_dir=runs_dir, name=name, device=device,
                            world=world, channel=channel, torch_device=torch_device)
    except GantuiError as exc:
        _say(0, str(exc), getattr(exc, "trace", ()))  # a user's model: their lines first
        return 1
    except OSError as exc:
        _say(0, f"{exc.filename or 'run directory'}: {exc.strerror or exc}")
        return 1
    code = run_headless(session)
    if code and any(isinstance(e, RankFailed) for e in session.error):
        return PEER_LOST_EXIT  # another rank failed first
    return code


def _train_other(world, channel, torch_device) -> int:
    from gantui.engine.distributed import RankFailed
    from gantui.headless import run_worker, worker_printer
    from gantui.session import start_worker

    try:
        trainer = start_worker(world, channel, torch_device, worker_printer(world.rank))
    except RankFailed:
        return PEER_LOST_EXIT  # that rank says why
    except GantuiError as exc:
        _say(world.rank, str(exc))
        return 1
    if trainer is None:  # rank 0 could not start the run; it says why
        return 1
    return run_worker(trainer)


def _say(rank: int, message: str, trace: tuple[str, ...] = ()) -> None:
    prefix = "gantui" if rank == 0 else f"gantui rank {rank}"
    with contextlib.suppress(OSError, ValueError):
        for line in trace:
            print(safe(line, 300), file=sys.stderr)
        print(safe(f"{prefix}: {message}"), file=sys.stderr, flush=True)


# ---- the launcher ------------------------------------------------------------------------

_AGENT_FRAME = re.compile(r"torch/distributed/(run\.py|elastic/|launcher/)")
_TORCH_LOG = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d[.\d]* +\d+ ")
_BANNER = ("*****", "Setting OMP_NUM_THREADS")


class TorchrunOutput:
    """Filters torchrun's combined output: workers' lines pass, torchrun's own log lines and
    the traceback and report it prints when a worker fails are held back, and the report's
    failures (which rank, what exit code) are kept for :meth:`summary`."""

    def __init__(self) -> None:
        self._held: list[str] = []
        self._in_traceback = False
        self._in_report = False
        self.failures: list[tuple[str, str]] = []
        """``(rank, exit code)`` of every failed rank in torchrun's report, its root cause
        (its "first observed failure") last."""

    def feed(self, line: str) -> list[str]:
        """Lines of ``line`` to show (none, it, or held ones released)."""
        text = line.rstrip("\n")
        if self._in_report:
            self._parse_report(text)
            return []
        if text.startswith("torch.distributed.elastic.multiprocessing.errors.ChildFailedError"):
            self._in_report, self._in_traceback, self._held = True, False, []
            return []
        if self._in_traceback:
            self._held.append(text)
            if text.startswith((" ", "\t")) or text.startswith("Traceback"):
                return []
            held, self._held, self._in_traceback = self._held, [], False
            if any(_AGENT_FRAME.search(h) for h in held):
                return []  # torchrun's own (a worker's error, even deep in torch, is shown)
            return held
        if text.startswith("Traceback (most recent call last)"):
            self._in_traceback, self._held = True, [text]
            return []
        if _TORCH_LOG.match(text) or text.startswith(_BANNER):
            return []
        return [text]

    def _parse_report(self, text: str) -> None:
        key, _, value = text.partition(":")
        key = key.strip()
        if key == "rank":
            self.failures.append((value.strip(), "?"))
        elif key == "exitcode" and self.failures and self.failures[-1][1] == "?":
            code = re.sub(r"\(pid: \d+\)\s*", "", value).strip()
            self.failures[-1] = (self.failures[-1][0], code)

    def flush(self) -> list[str]:
        held, self._held = self._held, []
        return [] if self._in_report else held

    def first_failure(self) -> tuple[str, str] | None:
        """The rank that failed first and its exit code: torchrun's root cause, unless that
        rank only ended because another failed (:data:`PEER_LOST_EXIT`; torchrun orders
        failures by the second they were seen, so a rank that followed within the same
        second can come first) and another rank failed otherwise."""
        if not self.failures:
            return None
        own = [f for f in reversed(self.failures) if f[1].split()[0] != str(PEER_LOST_EXIT)]
        return own[0] if own else self.failures[-1]

    def summary(self, code: int) -> str:
        """One line on how the launch ended."""
        first = self.first_failure()
        if first is not None:
            rank, exit_text = first
            return (f"rank {rank} failed first (exit code {exit_text}); torchrun stopped the "
                    f"other ranks")
        return f"torchrun exited with code {code}"


def torchrun_command(nproc: int, train_args: list[str]) -> list[str]:
    """``python -m torch.distributed.run --standalone ... -m gantui train --no-ui ARGS``,
    run through :func:`gantui.procs.guarded` so that it ends its ranks when the launcher is
    gone, its log folder a temporary one the guard removes."""
    return procs.guarded("torch.distributed.run", [
        "--standalone", f"--nproc-per-node={nproc}", "-m", "gantui", "train", "--no-ui",
        *train_args], scratch_option="--log-dir")


def check_nproc(nproc: int, device: str) -> None:
    """Refuse more ranks than this machine has GPUs (CUDA) or cores (CPU ranks).

    Raises:
        GantuiError: with the most this machine takes.
    """
    from gantui.system import available_cores

    spec = device.strip().lower()
    if spec.startswith("cuda:"):
        raise GantuiError("--nproc-per-node gives each rank its own GPU (cuda:LOCAL_RANK); "
                          "use --device cuda or auto, and CUDA_VISIBLE_DEVICES to choose GPUs")
    if spec != "cpu" and _gpu_driver_present():
        import torch  # seconds to import: only where a GPU may be

        cuda = torch.cuda.is_available()
        gpus = torch.cuda.device_count() if cuda else 0
    else:
        cuda, gpus = False, 0
    if cuda:
        if nproc > gpus:
            raise GantuiError(f"--nproc-per-node {nproc}: this machine has {gpus} GPU(s); one "
                              f"rank per GPU, so at most {gpus}")
        return
    if spec == "cuda":
        raise GantuiError("--device cuda: no CUDA device is available here")
    cores = available_cores()
    if nproc > cores:
        raise GantuiError(f"--nproc-per-node {nproc}: CPU ranks need a core each and this "
                          f"process may use {cores}; use at most {cores}")


def _gpu_driver_present() -> bool:
    """Whether a GPU driver is loaded (NVIDIA's, or ROCm's ``/dev/kfd``): without one torch
    finds no CUDA device, and the launcher spares itself torch's import."""
    return any(os.path.exists(p) for p in ("/proc/driver/nvidia", "/dev/nvidiactl", "/dev/kfd"))


def launch_env(nproc: int) -> dict[str, str]:
    """The workers' environment: the cores split between the ranks unless the user said."""
    from gantui.system import available_cores

    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, available_cores() // nproc)))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def launch_train(nproc: int, *, preset: str | None, sets: list[str], device: str,
                 runs_dir: Path | None, name: str | None, resume: Path | None,
                 dashboard: bool) -> int:
    """``gantui train --nproc-per-node N``: check everything a rank would refuse, name the run
    directory (rank 0 creates it), then :func:`launch` torchrun and follow it.

    Raises:
        GantuiError: too many ranks, a bad config, a name taken, not a run directory.
    """
    from gantui import config
    from gantui.run.store import default_run_name, free_run_name

    check_nproc(nproc, device)
    args = ["--device", device]
    for item in sets:
        args += ["--set", item]
    if resume is not None:
        if not (resume / "config.toml").is_file():
            raise GantuiError(f"{resume} is not a gantui run directory")
        return launch(nproc, [*args, "--resume", str(resume)], resume, dashboard=dashboard)
    preset_name, _ = config.load(preset, sets)  # fails here, before torchrun starts
    parent = runs_dir or Path("runs")
    if name is None:
        name = free_run_name(parent, default_run_name(preset_name))
    elif (parent / name).exists():
        raise GantuiError(f"{parent / name} already exists; resume it with --resume "
                          f"{parent / name} or pick another --name")
    args += ["--preset", preset or config.DEFAULT_PRESET, "--runs-dir", str(parent),
             "--name", name]
    return launch(nproc, args, parent / name, dashboard=dashboard)


def launch(nproc: int, train_args: list[str], run_dir: Path, *, dashboard: bool,
           out=None) -> int:
    """Start torchrun with ``nproc`` ranks of ``gantui train --no-ui ARGS`` and follow it.

    Headless, rank 0's lines are shown as they come. With ``dashboard``, the dashboard
    follows ``run_dir`` once rank 0 has made it; q leaves the run training in the
    background, x stops it. SIGTERM or SIGINT asks every rank to stop after a checkpoint (a
    second one, or :data:`gantui.procs.GRACE_S` without an end, kills them). SIGHUP (a
    dropped connection) takes only the terminal: headless, the launcher follows on unseen;
    the dashboard closes and leaves the run training, as q does.
    Returns torchrun's exit code (0 when the dashboard was left, or the stop asked done).
    """
    out = out if out is not None else sys.stdout
    proc = procs.Child(torchrun_command(nproc, train_args), env=launch_env(nproc),
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                       bufsize=1, errors="replace", group=True)
    lines: deque[str] = deque(maxlen=200)
    filt = TorchrunOutput()
    shown = threading.Event()  # headless: print as they come; dashboard: keep the tail

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            for text in filt.feed(line):
                lines.append(text)
                if not dashboard:
                    with contextlib.suppress(OSError, ValueError):
                        print(text, file=out, flush=True)
        for text in filt.flush():
            lines.append(text)
            if not dashboard:
                with contextlib.suppress(OSError, ValueError):
                    print(text, file=out, flush=True)
        shown.set()

    reader = threading.Thread(target=pump, name="gantui-torchrun-output", daemon=True)
    reader.start()

    signalled: list[int] = []
    hang_up: list[Callable[[], None]] = []  # closes the dashboard, once it is up

    def forward(signum: int, _frame) -> None:
        """The first signal asks rank 0 (through control.sock) for a stop, which every rank
        carries out at the same step, at its own pace; torchrun's own signal path would
        SIGKILL the ranks 30 s later, mid-checkpoint perhaps. A second signal ends it now
        (the checkpoints on disk are written atomically: they stay whole)."""
        if signum == signal.SIGHUP:  # a dropped connection: the run goes on without it
            procs.detach_from_terminal()
            if hang_up:
                hang_up[0]()
            return
        signalled.append(signum)
        if len(signalled) == 1 and _ask_stop(run_dir):
            with contextlib.suppress(OSError, ValueError):  # SIGHUP: the terminal is gone
                print("gantui: stopping every rank after a checkpoint (Ctrl-C again to end "
                      "it now)", file=sys.stderr, flush=True)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM if len(signalled) == 1 else signal.SIGKILL)

    left = False
    try:
        with procs.on_stop_signals(forward):
            if dashboard:
                left = _follow_with_dashboard(proc, run_dir, signalled, hang_up)
                if left and proc.poll() is None:
                    proc.release()
                    print(f"the run goes on in the background ({nproc} ranks, pid "
                          f"{proc.pid}): gantui watch {run_dir}", file=out)
                    return 0
            code = procs.wait_after_stop(proc, signalled)
    finally:
        if not left:  # any rank still there (torchrun itself killed, an error here) ends
            proc.end()
    shown.wait(5)
    if dashboard:  # what the ranks said, after the dashboard gave the terminal back
        for text in list(lines)[-20:]:
            print(text, file=out)
    if code != 0 and signalled and _final_state(run_dir) == "stopped":
        return 0  # stopped as asked, as a single process is (torchrun itself exits 1)
    if code != 0:
        kept = (f"; the checkpoints in {run_dir} are intact"
                if any((run_dir / "checkpoints").glob("ckpt-*.pt")) else "")
        print(f"gantui: {filt.summary(code)}{kept}", file=sys.stderr)
    return code


def _ask_stop(run_dir: Path) -> bool:
    """Send ``stop`` to the run's control socket without waiting for its answer; False when
    no process serves one (not started yet)."""
    if not (run_dir / "control.sock").exists():
        return False
    from gantui.remote import RemoteController

    try:
        RemoteController(run_dir, source="launcher").stop()
    except (GantuiError, OSError):
        return False
    return True


def _final_state(run_dir: Path) -> str:
    from gantui.run.runs import run_state

    try:
        return run_state(run_dir, is_live=lambda _path: False)
    except (OSError, ValueError):
        return "unknown"


def _follow_with_dashboard(proc: subprocess.Popen, run_dir: Path, signalled: list[int],
                           hang_up: list[Callable[[], None]]) -> bool:
    """The dashboard on ``run_dir`` once it exists; True when the user left it while the run
    still trains, False when the launch ended first (the dashboard closes when it fails, or
    ends after a stop signal)."""
    while not (run_dir / "config.toml").is_file():
        if proc.poll() is not None:
            return False
        time.sleep(0.1)
    from gantui.remote import RemoteController
    from gantui.run.follow import RunFollower
    from gantui.run.lock import is_locked
    from gantui.ui import GantuiApp

    controller = RemoteController(run_dir)
    app = GantuiApp(RunFollower(run_dir).drain, controller, attached=True,
                    title=f"gantui train · {run_dir.name} · torchrun",
                    can_steer=lambda: is_locked(run_dir))

    def close_on_failure() -> None:  # a launch that fails gives the terminal back at once
        if proc.wait() != 0 or signalled:
            with contextlib.suppress(Exception):
                app.call_from_thread(app.exit)

    threading.Thread(target=close_on_failure, name="gantui-torchrun-wait", daemon=True).start()
    hang_up.append(app.exit)
    try:
        app.run()
    finally:
        hang_up.clear()
        controller.close()
    return proc.poll() is None
