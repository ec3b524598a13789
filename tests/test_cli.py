"""The real ``gantui`` command: headless training, bad input, signals. Subprocesses where a
signal or the interpreter's start is the point; Typer's CliRunner (``cli``) elsewhere."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gantui import config
from gantui.run.store import RunStore, load_checkpoint_file

from .conftest import cli

TINY = ["--set", "g_hidden=32,32", "--set", "d_hidden=32,32", "--set", "batch_size=64"]


def gantui(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gantui", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)


def spawn(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gantui", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL)


def wait_for(predicate, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


def test_help_and_presets(tmp_path: Path) -> None:
    out = gantui("--help", cwd=tmp_path)
    assert out.returncode == 0 and "train" in out.stdout and "presets" in out.stdout
    out = gantui("presets", cwd=tmp_path)
    assert out.returncode == 0
    presets_part, _, studies_part = out.stdout.partition("\n\n")
    lines = presets_part.splitlines()
    assert [line.split()[0] for line in lines] == config.preset_names()
    assert any("[default]" in line and line.split()[0] == "dcgan-mnist" for line in lines)
    assert studies_part.startswith("studies (gantui sweep --study NAME")
    assert "ngf" in studies_part.split()


@pytest.mark.slow  # 1,000 full-width steps: the mode count needs them (8 of 8 here, 7 at 500)
def test_ring8_through_the_cli_covers_most_modes(tmp_path: Path) -> None:
    out = cli("train", "--no-ui", "--preset", "ring-8", "--set", "steps=1000",
              "--device", "cpu", "--name", "ring", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "finished 1000 steps" in out.stdout
    assert "loss_d" in out.stdout and "D(G(z))" in out.stdout and "img/s" in out.stdout
    run = tmp_path / "runs" / "ring"
    for name in ("config.toml", "metrics.jsonl", "events.jsonl", "samples", "checkpoints"):
        assert (run / name).exists(), name
    store = RunStore.open(run)
    assert {"step", "loss_d", "loss_g", "d_real", "d_fake"} <= set(store.metrics()[0])
    assert all("event" in r and "step" in r for r in store.events())

    # modes counted as in VEEGAN / PacGAN, on fresh samples from the final generator
    from gantui.models.builtin import build_models
    from gantui.quality.metrics import ring_coverage

    state = load_checkpoint_file(store.checkpoint_paths()[-1])
    assert state["step"] == 1000
    cfg = config.from_dict(state["config"])
    generator, _ = build_models(cfg)
    generator.load_state_dict(state["G"])
    generator.eval()
    with torch.no_grad():
        points = generator(torch.randn(2500, cfg.nz, generator=torch.Generator().manual_seed(9)))
    covered, quality = ring_coverage(points)
    assert covered >= 6, (covered, quality)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--preset", "ring-8", "--set", "lr=1"], "unknown key 'lr'"),
    (["--preset", "ring-8", "--set", "lr_g=high"], "bad value 'high' for lr_g"),
    (["--preset", "ring-8", "--set", "steps"], "expected KEY=VALUE"),
    (["--preset", "dcgan-celeba"], "needs --data PATH"),
    (["--preset", "dcgan-celeba", "--data", "/no/such/dir"], "does not exist"),
    (["--preset", "dcgan-mnist-plain", "--data", "/no/such/dir"], "does not exist"),
    (["--preset", "ring-8", "--device", "tpu"], "expected auto, cpu, cuda or cuda:N"),
    (["--resume", "/no/such/run"], "no run directory"),
    (["--preset", "/tmp/definitely-missing.toml"], "no such file"),
    (["--preset", "ring-8", "--set", "seed=99999999999999999999"], "seed must be <="),
    (["--preset", "ring-8", "--data", "/tmp"], "ring8 is synthesised"),
    (["--resume", "runs/x", "--name", "y"], "do not mix with --resume"),
])
def test_bad_input_is_one_line_and_nonzero(tmp_path: Path, args: list[str],
                                           fragment: str) -> None:
    out = cli("train", "--no-ui", *args, cwd=tmp_path)
    assert out.returncode == 1
    assert "Traceback" not in out.stderr + out.stdout
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    runs = tmp_path / "runs"
    assert not runs.exists() or not any(runs.iterdir()), "a failed start left a run behind"


def test_cuda_request_without_cuda_is_a_clear_error(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = cli("train", "--no-ui", "--preset", "ring-8", "--device", "cuda", cwd=tmp_path)
    assert out.returncode == 1 and "no CUDA device" in out.stderr


@pytest.mark.slow  # runs in child processes, signalled
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_mid_run_checkpoints_and_says_how_to_resume(tmp_path: Path, sig) -> None:
    proc = spawn("train", "--no-ui", "--preset", "ring-8", *TINY, "--set", "steps=10000000",
                 "--set", "log_every=20", "--set", "checkpoint_every=100000", "--name", "r",
                 "--device", "cpu", cwd=tmp_path)
    metrics = tmp_path / "runs" / "r" / "metrics.jsonl"
    try:
        wait_for(lambda: metrics.exists() and metrics.read_text().count("\n") >= 3)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, stderr
    assert f"gantui train --resume {Path('runs') / 'r'}" in stdout
    assert "Traceback" not in stderr
    store = RunStore.open(tmp_path / "runs" / "r")
    path, state = store.load_checkpoint()
    assert state["step"] > 0
    journal = store.events()
    assert journal[-1]["event"] == "state" and journal[-1]["state"] == "stopped"

    resumed = cli("train", "--no-ui", "--resume", str(store.path), "--set",
                  f"steps={state['step'] + 40}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming from {path}" in resumed.stdout
    assert load_checkpoint_file(store.checkpoint_paths()[-1])["step"] == state["step"] + 40


@pytest.mark.slow  # a run in a child process, signalled twice
def test_repeated_ctrl_c_quits_at_once_and_cleans_up(tmp_path: Path) -> None:
    # dcgan-mnist-plain at full width: a step and a checkpoint take long enough that the later
    # signals arrive while the stop is still under way
    proc = spawn("train", "--no-ui", "--preset", "dcgan-mnist-plain", "--set", "steps=10000000",
                 "--set", "log_every=2", "--name", "r", "--device", "cpu", cwd=tmp_path)
    run = tmp_path / "runs" / "r"
    try:
        wait_for(lambda: (run / "metrics.jsonl").exists() and (run / "control.sock").exists())
        # Ctrl-C until the process is gone, not a fixed count at fixed gaps: on loaded
        # cores a burst of signals can land as one; the first starts the stop, the next one
        # handled during it quits
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.03)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "terminate called" not in stderr
    assert f"gantui train --resume {Path('runs') / 'r'}" in stdout
    assert not (run / "control.sock").exists()
    assert not list((run / "checkpoints").glob(".*tmp*"))
    # the journal says it was stopped on purpose: not read as a crash, and it resumes
    last = RunStore.open(run).events()[-1]
    assert (last["event"], last["state"]) == ("state", "stopped"), last
    assert "Ctrl-C twice" in last["message"]
    listed = cli("runs", "--runs-dir", str(tmp_path / "runs"))
    assert "stopped" in listed.stdout and "crashed" not in listed.stdout, listed.stdout


def test_resume_after_a_crash_supersedes_metrics_past_the_checkpoint(tmp_path: Path) -> None:
    out = cli("train", "--no-ui", "--preset", "ring-8", *TINY, "--set", "steps=40",
              "--set", "log_every=10", "--set", "checkpoint_every=20", "--name", "c",
              "--device", "cpu", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "runs" / "c"
    store = RunStore.open(run)
    for ckpt in store.checkpoint_paths()[1:]:  # as if killed after step 40's metrics,
        ckpt.unlink()                          # before its checkpoint reached the disk
    assert store.checkpoint_paths()[-1].name == "ckpt-00000020.pt"
    resumed = cli("train", "--no-ui", "--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    steps = [r["step"] for r in store.metrics()]
    assert steps == [10, 20, 30, 40]  # counted up once, no repeats
    from gantui.files import read_jsonl

    assert [r["step"] for r in read_jsonl(run / "metrics-superseded.jsonl")] == [30, 40]


def test_default_preset_trains_headless_when_piped(tmp_path: Path) -> None:
    """No --no-ui: stdout is not a terminal, so the run is headless by itself."""
    out = cli("train", "--set", "steps=4", "--set", "log_every=2", "--set", "batch_size=16",
              "--set", "sample_every=4", "--device", "cpu", "--name", "d", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "starting d (dcgan-mnist) on cpu" in out.stdout
    assert "bundled 5,000-digit subset" in out.stdout and "into 50 clusters" in out.stdout
    assert list((tmp_path / "runs" / "d" / "samples").glob("step-*.png"))


def test_installed_presets_are_found_outside_the_checkout(tmp_path: Path) -> None:
    """The presets directory resolves to real files from any working directory."""
    out = subprocess.run([sys.executable, "-c", "from gantui import config; "
                          "print(config.presets_dir())"], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ})
    presets = Path(out.stdout.strip())
    assert sorted(p.stem for p in presets.glob("*.toml")) == config.preset_names()
