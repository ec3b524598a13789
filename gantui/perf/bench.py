"""``gantui bench``: throughput side by side, in one invocation.

For one preset it measures, in fresh processes and alternating rounds so drift hits every
mode alike:

- ``bare``: :mod:`gantui.perf.bare`, the same models, data and options in a plain loop;
- ``headless``: the real ``gantui train --no-ui`` (img/s as recorded in ``metrics.jsonl``);
- ``dashboard``: the real ``gantui train`` with its dashboard drawing into a pseudo-terminal
  (120x40) that is read like a terminal would;
- ``data``: the batch stream alone (an image folder decoded by workers, or its prepared
  cache).

Evaluation is switched off (``eval_every=0``) and checkpoints pushed past the end: the bench
measures the training loop, its logging and previews. It prints the ratios against the bare
loop, the data pipeline's headroom over what training consumes, and the FLOP/s achieved
against the device's peak where it is known.
"""

from __future__ import annotations

import fcntl
import json
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gantui import procs
from gantui.errors import GantuiError
from gantui.files import read_jsonl

if TYPE_CHECKING:  # the config loads where run_bench needs it
    from gantui.config import Config

MODES = ("bare", "headless", "dashboard")
TARGETS = {"headless": 0.98, "dashboard": 0.95}
"""Throughput each mode should keep, as a share of the bare loop."""
DATA_HEADROOM = 3.0
"""How many times what training consumes a prepared cache should deliver."""
STOP_S = 10.0
"""How long a measured run that the bench ends may take to exit before it is killed."""


def _train_args(preset: str, steps: int, name: str, sets: list[str], device: str
                ) -> list[str]:
    return [sys.executable, "-m", "gantui", "train", "--preset", preset, "--device", device,
            "--name", name, *[item for s in _bench_sets(steps, sets) for item in ("--set", s)]]


def _bench_sets(steps: int, sets: list[str]) -> list[str]:
    return [f"steps={steps}", "epochs=0", "checkpoint_every=1000000000", "eval_every=0", *sets]


class RunFailed(GantuiError):
    """A measured run failed: its last line, and in ``trace`` the lines it printed before a
    one-line ``error:`` (a user's model's own traceback), shown first as ``train`` shows them."""

    def __init__(self, message: str, trace: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.trace = trace


def _run(args: list[str], cwd: Path, label: str) -> str:
    child = procs.Child(args, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE, text=True, grace=STOP_S)
    try:
        stdout, stderr = child.communicate()
    finally:  # a stopped bench ends its run too
        child.end(STOP_S)
    if child.returncode != 0:
        lines = (stderr or stdout).strip().splitlines() or ["(no output)"]
        trace = tuple(lines[-41:-1]) if lines[-1].startswith("error: ") else ()
        raise RunFailed(f"the {label} run failed: {lines[-1].removeprefix('error: ')}", trace)
    return stdout


def _absolute_data(sets: list[str]) -> list[str]:
    """``data=`` made absolute: the bench's runs start in a folder of their own."""
    out = []
    for item in sets:
        key, sep, value = item.partition("=")
        if key.strip() == "data" and sep and value.strip():
            item = f"data={Path(value.strip()).expanduser().resolve()}"
        out.append(item)
    return out


def run_headless(args: list[str], cwd: Path) -> None:
    """One ``--no-ui`` run to completion."""
    _run([*args, "--no-ui"], cwd, "headless")


def run_dashboard(args: list[str], cwd: Path, run_dir: Path, cols: int = 120,
                  rows: int = 40) -> None:
    """One run with the dashboard in a pseudo-terminal; presses ``q`` once it has finished."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(cols), "LINES": str(rows)}
    proc = procs.Child(args, cwd=cwd, stdin=slave, stdout=slave, stderr=slave, env=env,
                       group=True, grace=STOP_S)
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
        proc.end(STOP_S)  # still running: the bench was stopped, or the run never finished
        done.set()
        os.close(master)
    if proc.returncode != 0:
        raise GantuiError(f"the dashboard run exited with {proc.returncode}")


def images_per_second(run_dir: Path) -> float:
    """Mean img/s over the log intervals after the first (the warm-up)."""
    rates = [r["img_per_s"] for r in read_jsonl(run_dir / "metrics.jsonl")
             if isinstance(r.get("img_per_s"), (int, float))]
    rates = rates[1:] or rates
    if not rates:
        raise GantuiError(f"{run_dir} recorded no metrics; use more --steps than log_every")
    return statistics.fmean(rates)


def run_bare(preset: str, steps: int, sets: list[str], device: str, cwd: Path,
             mode: str = "loop") -> dict[str, Any]:
    """One bare-loop (or data-pipeline) measurement in a fresh process."""
    spec = {"preset": preset, "sets": _bench_sets(steps, sets), "device": device,
            "mode": mode, "steps": steps, "batches": max(20, steps // 2)}
    label = "bare-loop" if mode == "loop" else "data-pipeline"
    out = _run([sys.executable, "-m", "gantui.perf.bare", json.dumps(spec)], cwd, label)
    return json.loads(out.strip().splitlines()[-1])


@dataclass
class BenchResult:
    """Everything one ``gantui bench`` measured."""

    preset: str
    device: str
    device_name: str
    steps: int
    rounds: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in MODES})
    """img/s per mode, one entry per round."""
    data_img_per_s: float = 0.0
    data_note: str = ""
    decode_img_per_s: float | None = None
    """For a folder with a prepared cache: the stream decoding the files instead."""
    flops_per_image: float = 0.0
    precision: str = "fp32"
    peak: float | None = None
    bare_leaves_out: str = ""
    """The networks the training runs have and the bare loop does not (an encoder, InfoGAN's
    Q), named in the report: their work counts as the trainer's overhead."""
    modes: tuple[str, ...] = MODES
    """The modes measured (``--modes``); ratios need ``bare``, the data's headroom and the
    FLOP/s achieved need ``headless``."""

    def mean(self, mode: str) -> float:
        """The median over rounds (robust to one disturbed round on a shared machine)."""
        values = self.rounds[mode]
        return statistics.median(values) if values else 0.0

    def spread(self, mode: str) -> float:
        """(max - min) / median over rounds: how noisy this machine is right now."""
        values = self.rounds[mode]
        median = self.mean(mode)
        return (max(values) - min(values)) / median if len(values) > 1 and median else 0.0

    def ratio(self, mode: str) -> float:
        """img/s of ``mode`` over the bare loop's (0 when the bare loop was not measured)."""
        bare = self.mean("bare")
        return self.mean(mode) / bare if bare else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "device": self.device, "device_name": self.device_name,
                "steps": self.steps, "rounds": {m: self.rounds[m] for m in self.modes},
                "img_per_s": {m: self.mean(m) for m in self.modes},
                "ratio": {m: self.ratio(m) for m in self.modes
                          if m != "bare" and "bare" in self.modes},
                "spread": {m: self.spread(m) for m in self.modes},
                "data_img_per_s": self.data_img_per_s, "data_note": self.data_note,
                "decode_img_per_s": self.decode_img_per_s,
                "data_headroom": self.headroom, "flops_per_image": self.flops_per_image,
                "achieved_flops": self.achieved_flops, "precision": self.precision,
                "peak_flops": self.peak}

    @property
    def headroom(self) -> float:
        """How many times what headless training consumes the data stream delivers."""
        used = self.mean("headless")
        return self.data_img_per_s / used if used else 0.0

    @property
    def achieved_flops(self) -> float:
        return self.flops_per_image * self.mean("headless")


def _device_facts(device: str, sets: list[str], preset: str) -> tuple[str, str, str]:
    """``(resolved device, its name, precision of its matmuls)``."""
    import torch

    from gantui import config as config_mod
    from gantui.engine.fast import uses_amp
    from gantui.session import resolve_device

    resolved = resolve_device(device)
    _, cfg = config_mod.load(preset, sets)
    cuda = resolved.type == "cuda"
    # what the trainer runs: amp only where bfloat16 is native, TF32 only on CUDA
    precision = "bf16" if uses_amp(cfg, resolved) else ("tf32" if cuda and cfg.tf32 else "fp32")
    if not cuda:
        import platform

        return str(resolved), platform.processor() or platform.machine() or "CPU", precision
    return str(resolved), torch.cuda.get_device_name(resolved), precision


def parse_modes(text: str) -> tuple[str, ...]:
    """``--modes``: a comma list of :data:`MODES`, returned in the bench's order.

    Raises:
        GantuiError: an unknown or empty list.
    """
    asked = {m.strip() for m in text.split(",") if m.strip()}
    unknown = sorted(asked - set(MODES))
    if unknown or not asked:
        raise GantuiError(f"--modes {text!r}: expected a comma list of {', '.join(MODES)}")
    return tuple(m for m in MODES if m in asked)


def run_bench(preset: str = "dcgan-mnist-plain", steps: int = 200, device: str = "cpu",
              data: str | None = None, rounds: int = 3, sets: list[str] | None = None,
              say: Callable[[str], None] = print, modes: tuple[str, ...] = MODES
              ) -> BenchResult:
    """Measure every mode of ``modes`` ``rounds`` times, alternating, then the data stream
    alone.

    SIGTERM, SIGINT or SIGHUP ends the run under way (SIGTERM, then SIGKILL after
    :data:`STOP_S`) and raises :class:`~gantui.procs.Stopped`; a bench killed outright has
    its runs end themselves (:func:`gantui.procs.follow_parent`).

    Raises:
        GantuiError: a bad preset or key, or a run that failed (its last line).
        Stopped: a stop signal.
    """
    from gantui import config as config_mod
    from gantui.perf.peaks import peak_flops

    sets = list(sets or [])
    if data:
        sets.append(f"data={data}")
    sets = _absolute_data(sets)
    _, cfg = config_mod.load(preset, _bench_sets(steps, sets))  # fails fast on bad input
    if steps < 2 * cfg.log_every:
        raise GantuiError(f"--steps {steps} is too few: the first log interval "
                          f"({cfg.log_every} steps) is warm-up, so use at least "
                          f"{2 * cfg.log_every}")
    resolved, name, precision = _device_facts(device, sets, preset)
    result = BenchResult(preset, resolved, name, steps, precision=precision,
                         peak=peak_flops(name, precision) if resolved.startswith("cuda")
                         else None, modes=modes, bare_leaves_out=_not_in_bare(cfg))
    with (procs.on_stop_signals(procs.raise_stopped()),
          tempfile.TemporaryDirectory(prefix="gantui-bench-") as tmp):
        cwd = Path(tmp)
        for round_ in range(rounds):
            for mode in modes:
                run_name = f"{mode}-{round_}"
                if mode == "bare":
                    measured = run_bare(preset, steps, sets, resolved, cwd)
                    rate = measured["img_per_s"]
                    result.flops_per_image = measured["flops_per_image"]
                else:
                    args = _train_args(preset, steps, run_name, sets, resolved)
                    if mode == "headless":
                        run_headless(args, cwd)
                    else:
                        run_dashboard(args, cwd, cwd / "runs" / run_name)
                    rate = images_per_second(cwd / "runs" / run_name)
                result.rounds[mode].append(rate)
                say(f"round {round_ + 1}/{rounds}  {mode:<9} {rate:>12,.1f} img/s")
        measured = run_bare(preset, steps, sets, resolved, cwd, mode="data")
        result.data_img_per_s, result.data_note = measured["img_per_s"], measured["note"]
        say(f"data pipeline alone   {result.data_img_per_s:>12,.1f} img/s")
        if "prepared cache" in result.data_note:
            decoded = run_bare(preset, steps, [*sets, "data_cache=false"], resolved, cwd,
                               mode="data")
            result.decode_img_per_s = decoded["img_per_s"]
            say(f"data decoding files   {result.decode_img_per_s:>12,.1f} img/s")
    return result


def _not_in_bare(cfg: Config) -> str:
    """What of ``cfg``'s training the bare loop does not do (empty: all of it)."""
    left = [what for what, on in (("the encoder", cfg.encoder), ("InfoGAN's Q", cfg.info_codes),
                                  ("AC-GAN's classifier", cfg.ac_weight > 0)) if on]
    return " and ".join(left)


def report(result: BenchResult) -> str:
    """The bench's summary, as printed by ``gantui bench``."""
    lines = [f"{result.preset} on {result.device} ({result.device_name}), {result.steps} "
             f"steps, {len(result.rounds[result.modes[0]])} round(s), alternating",
             f"{'mode':<10} {'img/s':>12}  {'vs bare':>8}  {'spread':>6}  target"]
    for mode in result.modes:
        ratio = result.ratio(mode)
        target = TARGETS.get(mode) if "bare" in result.modes else None
        verdict = "" if target is None else (
            f">= {target:.2f}  {'met' if ratio >= target else 'MISSED'}")
        spread = f"{100 * result.spread(mode):5.1f}%" if len(result.rounds[mode]) > 1 else "    --"
        shown = f"{ratio:>7.3f}x" if "bare" in result.modes else f"{'--':>8}"
        lines.append(f"{mode:<10} {result.mean(mode):>12,.1f}  {shown}  {spread}  {verdict}")
    source = result.data_note.split(";")[0]
    if "headless" not in result.modes:
        lines.append(f"{'data':<10} {result.data_img_per_s:>12,.1f}  ({source}; its headroom "
                     f"needs the headless mode)")
    else:
        lines.append(f"{'data':<10} {result.data_img_per_s:>12,.1f}  {result.headroom:>7.1f}x "
                     f"what headless training consumes ({source})")
    if "prepared cache" in result.data_note and "headless" in result.modes:
        verdict = "met" if result.headroom >= DATA_HEADROOM else "MISSED"
        lines[-1] += f"; target >= {DATA_HEADROOM:.0f}x {verdict}"
    if result.decode_img_per_s is not None and "headless" in result.modes:
        used = result.mean("headless")
        lines.append(f"{'decoding':<10} {result.decode_img_per_s:>12,.1f}  "
                     f"{result.decode_img_per_s / used if used else 0:>7.1f}x with "
                     f"data_cache=false (the files decoded by num_workers)")
    lines.append("img/s: median over rounds; spread: (max - min) / median, the machine's noise")
    if result.bare_leaves_out and "bare" in result.modes:
        lines.append(f"the bare loop trains without {result.bare_leaves_out}: their work "
                     f"counts as overhead in the ratios")
    if not {"bare", "headless"} <= set(result.modes):
        return "\n".join(lines)  # the FLOPs are counted by the bare loop, used by headless
    flops = result.flops_per_image
    achieved = result.achieved_flops
    line = (f"compute: {flops / 1e9:.3f} GFLOP per image per step (forward + backward, G and "
            f"D), {achieved / 1e12:.3f} TFLOP/s achieved")
    if result.peak:
        line += (f" = {100 * achieved / result.peak:.2f}% of the {result.precision} dense peak "
                 f"({result.peak / 1e12:,.0f} TFLOP/s)")
    else:
        line += " (no known peak for this device)"
    lines.append(line)
    return "\n".join(lines)
