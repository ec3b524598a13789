"""Throughput benchmark: the same run headless and with the dashboard, side by side.

``python -m gantui.perf.bench [--preset P] [--steps N] [--rounds R] [--device D] [--set K=V]`` runs
the real ``gantui train`` command (with the preset's own log and sample cadence) alternately
with ``--no-ui`` and with the dashboard in a pseudo-terminal (120x40), and compares the
images/s each run recorded in ``metrics.jsonl`` (the first log interval, with its warm-up, is
left out).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import threading
import time
from pathlib import Path

from gantui.files import read_jsonl


def _train_args(preset: str, steps: int, name: str, extra: list[str],
                device: str = "cpu") -> list[str]:
    return [sys.executable, "-m", "gantui", "train", "--preset", preset, "--device", device,
            "--name", name, "--set", f"steps={steps}", "--set", "checkpoint_every=1000000",
            *[item for s in extra for item in ("--set", s)]]


def run_headless(args: list[str], cwd: Path) -> None:
    """One ``--no-ui`` run to completion."""
    subprocess.run([*args, "--no-ui"], cwd=cwd, check=True, stdout=subprocess.DEVNULL)


def run_dashboard(args: list[str], cwd: Path, run_dir: Path, cols: int = 120,
                  rows: int = 40) -> None:
    """One run with the dashboard in a pseudo-terminal; presses ``q`` once it has finished."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
    proc = subprocess.Popen(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env,
                            start_new_session=True)
    os.close(slave)
    done = threading.Event()

    def pump() -> None:  # read the screen like a terminal would, and throw it away
        while not done.is_set():
            try:
                if not os.read(master, 65536):
                    return
            except OSError:
                return

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        while proc.poll() is None:
            states = [r.get("state") for r in read_jsonl(run_dir / "events.jsonl")
                      if r.get("event") == "state"]
            if states and states[-1] in ("finished", "error", "stopped"):
                time.sleep(0.5)
                os.write(master, b"q")
            time.sleep(0.5)
    finally:
        done.set()
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    if proc.returncode != 0:
        raise RuntimeError(f"dashboard run exited with {proc.returncode}")


def images_per_second(run_dir: Path) -> float:
    """Mean img/s over the log intervals after the first."""
    rates = [r["img_per_s"] for r in read_jsonl(run_dir / "metrics.jsonl")][1:]
    return statistics.fmean(rates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="dcgan-mnist")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--set", dest="sets", action="append", default=[],
                        help="extra KEY=VALUE overrides for both runs")
    opts = parser.parse_args(argv)
    results: dict[str, list[float]] = {"headless": [], "dashboard": []}
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for round_ in range(opts.rounds):
            for mode in ("headless", "dashboard"):
                name = f"{mode}-{round_}"
                args = _train_args(opts.preset, opts.steps, name, opts.sets, opts.device)
                if mode == "headless":
                    run_headless(args, cwd)
                else:
                    run_dashboard(args, cwd, cwd / "runs" / name)
                rate = images_per_second(cwd / "runs" / name)
                results[mode].append(rate)
                print(f"{opts.preset} {mode:9s} round {round_}: {rate:9,.1f} img/s", flush=True)
    headless = statistics.fmean(results["headless"])
    dashboard = statistics.fmean(results["dashboard"])
    print(f"{opts.preset}: headless {headless:,.1f} img/s, dashboard {dashboard:,.1f} img/s, "
          f"ratio {dashboard / headless:.3f}")


if __name__ == "__main__":
    main()
