"""What the machine is doing: GPU, CPU and memory, sampled in a thread of its own.

:class:`SystemSampler` reads the host (psutil) and every visible NVIDIA GPU (NVML through
``nvidia-ml-py``, imported lazily) about once a second, hands each sample to ``emit`` as a
:class:`~gantui.events.System` event and appends one every ``record_every`` seconds to the
run's ``system.jsonl``, so ``gantui watch`` shows the pane for a headless run too. Without a
driver or without nvidia-ml-py the GPU part degrades to a note; nothing here ever raises into
the run. The trainer thread never samples: a slow NVML call costs the trainer nothing.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gantui import events as ev

NAN = math.nan
GPU_FIELDS = ("index", "util", "mem_used", "mem_total", "temp", "power", "power_limit",
              "process_mem")


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota
    (``cpu.max`` in a container started with ``--cpus``), at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def visible_indices(count: int, env: str | None) -> list[int | str]:
    """The NVML devices this process's CUDA can see, from ``CUDA_VISIBLE_DEVICES``.

    Integers are NVML indices; strings are UUIDs (``GPU-...``). Unset: all ``count``; an
    entry that is not a valid index stops the list, as CUDA does.
    """
    if env is None:
        return list(range(count))
    out: list[int | str] = []
    for item in (part.strip() for part in env.split(",")):
        if item.startswith(("GPU-", "MIG-")):
            out.append(item)
        elif item.isdigit() and int(item) < count:
            out.append(int(item))
        else:
            break
    return out


class _Nvml:
    """Handles to the visible GPUs; every read returns NaN rather than raising."""

    def __init__(self) -> None:
        self.note = ""
        self.handles: list[Any] = []
        self.names: list[str] = []
        self.indices: list[int] = []
        try:
            import pynvml
        except ImportError:
            self.nvml = None
            self.note = _no_gpu_note()
            return
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...
            self.nvml = None
            self.note = "no NVIDIA GPU (no driver)"
            return
        for position, which in enumerate(visible_indices(count,
                                                         os.environ.get("CUDA_VISIBLE_DEVICES"))):
            try:
                handle = (pynvml.nvmlDeviceGetHandleByUUID(which) if isinstance(which, str)
                          else pynvml.nvmlDeviceGetHandleByIndex(which))
                name = pynvml.nvmlDeviceGetName(handle)
            except Exception:
                continue
            self.handles.append(handle)
            self.names.append(name.decode() if isinstance(name, bytes) else str(name))
            self.indices.append(position)
        if not self.handles:
            self.note = "no NVIDIA GPU visible" if count else "no NVIDIA GPU"

    def _read(self, fn: Callable[[], float]) -> float:
        try:
            return float(fn())
        except Exception:
            return NAN

    def sample(self, pid: int) -> list[dict[str, float]]:
        nv = self.nvml
        if nv is None:
            return []
        out = []
        for index, handle in zip(self.indices, self.handles, strict=True):
            memory = _call(nv.nvmlDeviceGetMemoryInfo, handle)
            out.append({
                "index": float(index),
                "util": self._read(lambda h=handle: nv.nvmlDeviceGetUtilizationRates(h).gpu),
                "mem_used": float(memory.used) if memory is not None else NAN,
                "mem_total": float(memory.total) if memory is not None else NAN,
                "temp": self._read(lambda h=handle: nv.nvmlDeviceGetTemperature(
                    h, nv.NVML_TEMPERATURE_GPU)),
                "power": self._read(lambda h=handle: nv.nvmlDeviceGetPowerUsage(h) / 1000),
                "power_limit": self._read(
                    lambda h=handle: nv.nvmlDeviceGetEnforcedPowerLimit(h) / 1000),
                "process_mem": self._process_memory(handle, pid),
            })
        return out

    def _process_memory(self, handle: Any, pid: int) -> float:
        nv = self.nvml
        for getter in ("nvmlDeviceGetComputeRunningProcesses",
                       "nvmlDeviceGetGraphicsRunningProcesses"):
            procs = _call(getattr(nv, getter, None), handle) or []
            for proc in procs:
                if getattr(proc, "pid", None) == pid:
                    used = getattr(proc, "usedGpuMemory", None)
                    return float(used) if isinstance(used, int) else NAN
        return NAN

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass


def _call(fn: Callable | None, *args: Any) -> Any:
    if fn is None:
        return None
    try:
        return fn(*args)
    except Exception:
        return None


def _no_gpu_note() -> str:
    """Without nvidia-ml-py: say how to get GPU figures when CUDA is there to measure."""
    import sys

    torch = sys.modules.get("torch")  # never import torch just for this
    if torch is not None and torch.cuda.is_available():
        return "GPU figures need nvidia-ml-py: pip install 'gantui[gpu]'"
    return "no NVIDIA GPU"


class SystemSampler:
    """Samples the machine in a daemon thread until :meth:`close`.

    Args:
        emit: Receives each :class:`~gantui.events.System` (a queue's ``put``); called from
            the sampler's thread.
        step: Returns the run's current step, stamped on each sample (a plain read).
        record: A ``system.jsonl`` path, appended to every ``record_every`` seconds; None
            records nothing.
        interval: Seconds between samples.
    """

    def __init__(self, emit: ev.Emit | None = None, *, step: Callable[[], int] = lambda: 0,
                 record: Path | None = None, interval: float = 1.0,
                 record_every: float = 10.0) -> None:
        self.emit = emit
        self.step = step
        self.record = record
        self.interval = interval
        self.record_every = record_every
        self.latest: ev.System | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._nvml: _Nvml | None = None
        self._process: Any = None
        self._last_record = -math.inf

    def start(self) -> SystemSampler:
        """Start sampling in the background; returns self."""
        self._thread = threading.Thread(target=self._run, name="gantui-system", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread (and write nothing more)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        writer = None
        try:
            while not self._stop.is_set():
                sample = self.sample()
                if self.emit is not None:
                    self.emit(sample)
                if self.record is not None and sample.time - self._last_record >= \
                        self.record_every:
                    from gantui.run.store import JsonlWriter

                    if writer is None:
                        writer = JsonlWriter(self.record)
                    record = ev.to_record(sample)
                    record.pop("event")
                    writer.write(record)
                    self._last_record = sample.time
                self._stop.wait(self.interval)
        except Exception:  # noqa: BLE001 - the pane goes quiet; the run is never touched
            return
        finally:
            if writer is not None:
                writer.close()
            if self._nvml is not None:
                self._nvml.close()

    def sample(self) -> ev.System:
        """One sample of the host and the visible GPUs (first call: also opens NVML)."""
        if self._nvml is None:
            self._nvml = _Nvml()
        host = _host(self)
        gpus = self._nvml.sample(os.getpid())
        self.latest = ev.System(
            step=self.step(), time=time.time(), **host,
            gpus=tuple(gpus), gpu_names=tuple(self._nvml.names) if gpus else (),
            gpu_note=self._nvml.note if not gpus else "")
        return self.latest


def _host(sampler: SystemSampler) -> dict[str, Any]:
    try:
        import psutil
    except ImportError:
        return {"cpu_percent": NAN, "cpus": os.cpu_count() or 0, "process_cpu": NAN,
                "ram_used": NAN, "ram_total": NAN, "rss": NAN}
    if sampler._process is None:
        sampler._process = psutil.Process()
        psutil.cpu_percent(None)  # the first reading of both is meaningless (0.0)
        sampler._process.cpu_percent(None)
        time.sleep(0.05)
    memory = psutil.virtual_memory()
    return {"cpu_percent": float(psutil.cpu_percent(None)), "cpus": psutil.cpu_count() or 0,
            "process_cpu": float(sampler._process.cpu_percent(None)),
            "ram_used": float(memory.total - memory.available), "ram_total": float(memory.total),
            "rss": float(sampler._process.memory_info().rss)}


# ---- how the pane and watch show a sample ------------------------------------------------

def _gib(value: float) -> str:
    return "?" if not math.isfinite(value) else f"{value / 2**30:.1f}"


def _pct(value: float) -> str:
    return "?" if not math.isfinite(value) else f"{value:.0f}%"


def host_line(sample: ev.System) -> str:
    """``cpu 87% of 2 · proc 180% · ram 3.1/23.4 GiB · rss 0.8 GiB``."""
    return (f"cpu {_pct(sample.cpu_percent)} of {sample.cpus} · proc "
            f"{_pct(sample.process_cpu)} · ram {_gib(sample.ram_used)}/"
            f"{_gib(sample.ram_total)} GiB · rss {_gib(sample.rss)} GiB")


def gpu_line(gpu: dict[str, float], name: str = "", compact: bool = False) -> str:
    """``gpu0 97% 31.2/80.0 GiB (this run 30.1) 64C 310/700 W``; ``compact`` drops the name
    and this run's share."""
    index = gpu.get("index", NAN)
    label = f"gpu{int(index)}" if math.isfinite(index) else "gpu?"
    power, limit = gpu.get("power", NAN), gpu.get("power_limit", NAN)
    temp = gpu.get("temp", NAN)
    parts = [label if compact or not name else f"{label} {name}",
             _pct(gpu.get("util", NAN)),
             f"{_gib(gpu.get('mem_used', NAN))}/{_gib(gpu.get('mem_total', NAN))} GiB"]
    mine = gpu.get("process_mem", NAN)
    if not compact and math.isfinite(mine):
        parts.append(f"(this run {_gib(mine)})")
    if math.isfinite(temp):
        parts.append(f"{temp:.0f}C")
    if math.isfinite(power):
        parts.append(f"{power:.0f}/{limit:.0f} W" if math.isfinite(limit) else f"{power:.0f} W")
    return " ".join(parts)


def system_lines(sample: ev.System, width: int, rows: int, stale: str = "") -> list[str]:
    """The pane's text: one compact line when ``rows`` is 1, else a host line and a line
    per GPU (as many as fit). ``stale`` (e.g. ``as of 5m ago``) says the sample is old: it
    leads the compact line, which drops its least useful figures to fit ``width`` columns,
    and ends the host line otherwise."""
    from gantui.text import safe

    names = [safe(n, 40) for n in sample.gpu_names]
    if rows <= 1:
        return [_compact_line(sample, width, stale)]
    lines = [gpu_line(g, names[i] if i < len(names) else "") for i, g in enumerate(sample.gpus)]
    if not lines:
        lines = [safe(sample.gpu_note, 60) or "no GPU figures"]
    shown = lines[:rows - 1]
    if len(lines) > len(shown):
        shown[-1] = f"{shown[-1]}  (+{len(lines) - len(shown)} more GPUs)"
    host = host_line(sample)
    return [*shown, f"{host}  ({stale})" if stale else host]


def _compact_line(sample: ev.System, width: int, stale: str) -> str:
    """``as of 5m ago │ gpu0 97% 31.2/80.0G 64C 310/700W │ cpu 87% of 16 · proc 180% · ...``
    within ``width`` columns (no limit when 0): whole figures are left out, least useful
    first, so the staleness, the first GPU (or the no-GPU note) and the CPU stay longest;
    ``+N GPUs`` says when GPUs had to go."""
    from gantui.text import safe

    n_gpus = len(sample.gpus)
    host = n_gpus + 2  # groups: 0 staleness, 1.. one per GPU, n+1 the "+N GPUs" mark, host
    fields: list[tuple[int, int, str]] = []  # (group, priority: lower stays longer, text)
    if stale:
        fields.append((0, 0, stale))
    for i, gpu in enumerate(sample.gpus):
        index = gpu.get("index", NAN)
        label = f"gpu{int(index)}" if math.isfinite(index) else "gpu?"
        fields.append((1 + i, 1 if i == 0 else 3, f"{label} {_pct(gpu.get('util', NAN))} "
                       f"{_gib(gpu.get('mem_used', NAN))}/{_gib(gpu.get('mem_total', NAN))}G"))
        extra = []
        if math.isfinite(temp := gpu.get("temp", NAN)):
            extra.append(f"{temp:.0f}C")
        if math.isfinite(power := gpu.get("power", NAN)):
            limit = gpu.get("power_limit", NAN)
            extra.append(f"{power:.0f}/{limit:.0f}W" if math.isfinite(limit) else f"{power:.0f}W")
        if extra:
            fields.append((1 + i, 7, " ".join(extra)))
    if not n_gpus:
        fields.append((1, 1, safe(sample.gpu_note, 40) or "no GPU figures"))
    fields += [(host, 2, f"cpu {_pct(sample.cpu_percent)} of {sample.cpus}"),
               (host, 6, f"proc {_pct(sample.process_cpu)}"),
               (host, 4, f"ram {_gib(sample.ram_used)}/{_gib(sample.ram_total)}G"),
               (host, 5, f"rss {_gib(sample.rss)}G")]

    def join(chosen: set[int]) -> str:
        groups: dict[int, list[str]] = {}
        for i in sorted(chosen):
            groups.setdefault(fields[i][0], []).append(fields[i][2])
        return " │ ".join((" · " if group == host else " ").join(texts)
                          for group, texts in sorted(groups.items()))

    everything = set(range(len(fields)))
    if width <= 0 or len(join(everything)) <= width:
        return join(everything)
    chosen: set[int] = set()
    for i in sorted(everything, key=lambda i: fields[i][1]):
        if len(join(chosen | {i})) <= width:
            chosen.add(i)
    mark = len(fields)
    fields.append((n_gpus + 1, 8, ""))
    while hidden := n_gpus - len({fields[i][0] for i in chosen if 1 <= fields[i][0] <= n_gpus}):
        fields[mark] = (n_gpus + 1, 8, f"+{hidden} GPU{'s' if hidden > 1 else ''}")
        if len(chosen) <= 1 or len(join(chosen | {mark})) <= width:
            chosen.add(mark)
            break
        chosen.remove(max(chosen, key=lambda i: (fields[i][1], i)))  # room for the mark
    return join(chosen)
