"""Shared toy-size fixtures: real pieces, tiny sizes, the CPU."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import pytest

# Toy-size tensors go faster on one thread than on two shared cores (107 tests measured side
# by side: 77 s on torch's default, 60 s on one). Set before torch is first imported, so the
# test process and every child it starts (gantui commands, torchrun ranks) inherit it; the
# thread choice itself is tested in test_fast.py with explicit counts. It is also what lets
# pytest-xdist run a worker per core (pyproject.toml): one thread per torch process keeps two
# workers on two cores from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from gantui import config  # noqa: E402
from gantui.config import Config

TINY_RING = [
    "g_hidden=32,32", "d_hidden=32,32", "batch_size=64", "steps=60", "log_every=10",
    "sample_every=20", "checkpoint_every=30", "n_samples=64",
]


def tiny(preset: str = "ring-8", *extra: str) -> Config:
    """A preset shrunk to toy size; ``extra`` are further ``KEY=VALUE`` overrides."""
    sets = list(TINY_RING) if preset == "ring-8" else [
        "ngf=8", "ndf=8", "g_hidden=32,32", "d_hidden=32,32", "nz=8", "batch_size=16",
        "steps=6", "log_every=2", "sample_every=3", "checkpoint_every=3", "n_samples=20",
        "num_workers=0", "epochs=0",
    ]
    return config.load(preset, [*sets, *extra])[1]


def straight_and_resumed(runs_dir: Path, preset: str, sets: list[str], steps: int
                         ) -> tuple[dict, dict]:
    """Run ``preset`` for ``steps`` steps, and a twin of it stopped after its checkpoint
    before the last (its last checkpoint removed) and resumed to the end: the two final
    checkpoints, both at ``steps``, for a test to compare."""
    from gantui.headless import follow
    from gantui.run.store import RunStore, load_checkpoint_file
    from gantui.session import start

    straight = start(tiny(preset, *sets, f"steps={steps}"), preset, runs_dir=runs_dir,
                     name="straight", device="cpu")
    follow(straight, 120)
    twin = runs_dir / "twin"
    shutil.copytree(straight.run_dir, twin)
    RunStore.open(twin).checkpoint_paths()[-1].unlink()
    resumed = start(None, "", resume=twin, device="cpu")
    follow(resumed, 120)
    assert straight.state == resumed.state == "finished"
    a = load_checkpoint_file(RunStore.open(straight.run_dir).checkpoint_paths()[-1])
    b = load_checkpoint_file(RunStore.open(twin).checkpoint_paths()[-1])
    assert a["step"] == b["step"] == steps
    return a, b


JUDGED_FILES = frozenset({"test_quality_judge.py", "test_diagnostics.py", "test_ecgan.py",
                          "test_clusters.py"})
"""The test files that use ``trained_judge``; pytest-xdist runs them on one worker."""


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """pytest-xdist's work units (``-n auto`` in pyproject.toml): a test file is one unit, so
    its module fixtures run once, and the files that use ``trained_judge`` are one unit
    together, so the judge is trained once per test run and no worker waits for it.

    Done here because ``--dist loadgroup`` no longer groups on pytest 9.2 (it renames node
    ids, which pytest's structured ids ignore: pytest-xdist issue 1386); the scope is read
    from the file name instead."""
    from xdist.scheduler import LoadScopeScheduling

    class ByFile(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = nodeid.split("::", 1)[0]
            return "trained-judge" if Path(file).name in JUDGED_FILES else file

    return ByFile(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Keeps :data:`JUDGED_FILES` true: a file that uses ``trained_judge`` and is not in it
    would train the judge a second time on the other worker."""
    stray = sorted({item.path.name for item in items
                    if "trained_judge" in getattr(item, "fixturenames", ())} - JUDGED_FILES)
    if stray:
        raise pytest.UsageError(f"add {', '.join(stray)} to JUDGED_FILES in tests/conftest.py")


@pytest.fixture(scope="session", autouse=True)
def keys_without_idle_waits() -> None:
    """Textual's pilot waits, after every key, until this process's CPU time stops advancing
    (up to a second, twice per key). With a trainer computing in this process it never does,
    so each key cost two seconds. The key is still handled before ``press`` returns (the
    pilot also waits for every widget to process its queued messages); only the idle wait is
    cut to what an idle app takes."""
    import functools

    import textual.app
    import textual.pilot
    from textual._wait import wait_for_idle

    short = functools.partial(wait_for_idle, max_sleep=0.05)
    saved = textual.app.wait_for_idle, textual.pilot.wait_for_idle
    textual.app.wait_for_idle = textual.pilot.wait_for_idle = short
    yield
    textual.app.wait_for_idle, textual.pilot.wait_for_idle = saved


@pytest.fixture(scope="session", autouse=True)
def gantui_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache (the digit judge, Inception statistics) for the whole session, in a fresh
    folder: tests never read or write the user's ``~/.cache/gantui``. Subprocesses inherit it."""
    path = tmp_path_factory.mktemp("gantui-cache")
    os.environ["GANTUI_CACHE"] = str(path)
    return path


class CliResult(NamedTuple):
    """What a ``gantui`` command left behind, shaped like ``subprocess.CompletedProcess``."""

    returncode: int
    stdout: str
    stderr: str


def cli(*args: str, cwd: Path | None = None) -> CliResult:
    """Run the real ``gantui`` command in this process with Typer's ``CliRunner``.

    For argument and message checks, and for short commands whose output is the point: no
    interpreter and no torch import per call. stdout is not a terminal, so ``train`` runs
    headless as it does when piped. An exception the command did not turn into an exit code
    is raised here (a subprocess would have printed its traceback), so a test cannot pass on
    one. Signals, sockets held by the process, terminals and torchrun stay in subprocesses.

    Args:
        args: the command line after ``gantui``.
        cwd: the working directory for the call (relative paths such as ``runs`` resolve
            there); default: the current one.

    Returns:
        The exit code and the captured stdout and stderr.
    """
    from typer.testing import CliRunner

    from gantui.cli import app

    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    with contextlib.chdir(cwd or Path.cwd()):
        result = CliRunner().invoke(app, list(args), prog_name="gantui")
    torch = sys.modules.get("torch")
    if threads is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)  # a ``threads`` key applies process-wide
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.stderr)


def copy_run(source: Path, parent: Path, name: str | None = None) -> Path:
    """A private copy of a finished run directory under ``parent`` (for tests that change it)."""
    target = parent / (name or source.name)
    parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(source, target)
    return target


@pytest.fixture(scope="session")
def finished_ring(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One finished tiny ring-8 run (``tiny()``: 60 steps, checkpoints at steps 30 and 60),
    trained once per session. Read it as it is; ``copy_run`` it before changing anything."""
    from gantui.headless import follow
    from gantui.session import start

    session = start(tiny("ring-8"), "ring-8", runs_dir=tmp_path_factory.mktemp("finished"),
                    name="r", device="cpu")
    follow(session, 120)
    assert session.state == "finished"
    return session.run_dir


def workers() -> int:
    """How many pytest-xdist workers share this machine (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))


@pytest.fixture(scope="session")
def trained_judge(gantui_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The bundled-digit judge, trained once per session into a fresh folder (what the judge
    tests inspect: messages, RNG, time) and copied into the session cache, where every run
    evaluated later in the session finds it instead of training its own. Under pytest-xdist
    every file that uses it runs on one worker (``pytest_xdist_make_scheduler``), so it is
    trained once per test run."""
    import torch

    from gantui.quality.judge import load_judge

    cache = tmp_path_factory.mktemp("judge-cache")
    messages: list[str] = []
    threads = torch.get_num_threads()
    # the cores this worker may use: 14 s on two cores here, against 22 s on one
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers()))
    try:
        torch.manual_seed(1234)
        before = torch.get_rng_state()
        started = time.perf_counter()
        judge, info, held_x, held_y = load_judge(cache_dir=cache, log=messages.append)
        seconds = time.perf_counter() - started
        after = torch.get_rng_state()
    finally:
        torch.set_num_threads(threads)
    for path in cache.glob("judge-*.pt"):
        if not (gantui_cache / path.name).exists():
            shutil.copy2(path, gantui_cache / path.name)
    return {"cache": cache, "judge": judge, "info": info, "held_x": held_x, "held_y": held_y,
            "messages": messages, "rng_before": before, "rng_after": after, "seconds": seconds}


@pytest.fixture(scope="module")
def one_thread():
    """Two torch threads on two shared cores thrash; one is steady and gives the same numbers.
    For modules that measure: ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def tiny_cfg() -> Config:
    """ring-8 with tiny MLPs: 60 steps in well under a second on the CPU."""
    return tiny()


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """A fresh runs directory."""
    path = tmp_path / "runs"
    path.mkdir()
    return path


def make_image_folder(root: Path, n: int = 24, size: int = 40, bad: int = 0) -> Path:
    """Write ``n`` small random RGB images (nested, mixed formats) plus ``bad`` broken files."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        sub = root / f"part{i % 3}"
        sub.mkdir(parents=True, exist_ok=True)
        array = rng.integers(0, 255, (size, size + 8 * (i % 2), 3), dtype=np.uint8)
        Image.fromarray(array).save(sub / f"img{i:03d}.{'png' if i % 2 else 'jpg'}")
    for i in range(bad):
        (root / f"broken{i}.jpg").write_bytes(b"not a jpeg at all")
    return root


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``condition()`` until it holds; fails naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


async def until(pilot, condition, timeout: float = 30.0) -> None:
    """Let a Textual app run until ``condition()`` holds (fails after ``timeout`` seconds)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "condition not reached in time"
        await pilot.pause(0.05)


def scripted(events: list) -> Callable[[], list]:
    """A dashboard ``drain`` that hands over ``events`` once, then nothing."""
    queue = list(events)

    def drain() -> list:
        out = list(queue)
        queue.clear()
        return out

    return drain
