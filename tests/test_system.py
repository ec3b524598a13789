"""The system pane: sampling outside the trainer, system.jsonl, watch, the dashboard, and the
data-wait fraction with its health warning."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import sys
import time
import types
from pathlib import Path

import pytest

from gantui import events as ev
from gantui.files import read_jsonl
from gantui.headless import follow
from gantui.run.follow import RunFollower
from gantui.system import SystemSampler, gpu_line, system_lines, visible_indices
from gantui.ui import GantuiApp

from .conftest import make_image_folder, scripted, tiny

GIB = 2**30


class FakeNvml(types.ModuleType):
    """Stands in for nvidia-ml-py on a machine without a GPU: two devices, NVML's calls and
    errors; this process uses 3 GiB on the second one."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init: bool = False) -> None:
        super().__init__("pynvml")
        self.fail_init = fail_init
        self.shutdown = False

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetHandleByUUID(self, uuid):
        raise self.NVMLError("Not Found")

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H100 80GB HBM3"

    def nvmlDeviceGetUtilizationRates(self, h):
        return types.SimpleNamespace(gpu=97 if h else 3)

    def nvmlDeviceGetMemoryInfo(self, h):
        return types.SimpleNamespace(used=(31 if h else 1) * GIB, total=80 * GIB)

    def nvmlDeviceGetTemperature(self, h, kind):
        if h == 0:
            raise self.NVMLError("Not Supported")  # a value NVML cannot give: NaN, left out
        return 64

    def nvmlDeviceGetPowerUsage(self, h):
        return 310_000

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        return 700_000

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [types.SimpleNamespace(pid=os.getpid(), usedGpuMemory=3 * GIB)] if h else []

    def nvmlDeviceGetGraphicsRunningProcesses(self, h):
        return []


def test_visible_devices_follow_cuda_visible_devices() -> None:
    assert visible_indices(4, None) == [0, 1, 2, 3]
    assert visible_indices(4, "2,0") == [2, 0]
    assert visible_indices(4, "1,9,2") == [1]  # CUDA stops at the first invalid entry
    assert visible_indices(4, "") == [] and visible_indices(4, "-1") == []
    assert visible_indices(4, "GPU-8f3a,1") == ["GPU-8f3a", 1]


def test_a_machine_without_a_gpu_says_so_and_still_shows_the_host() -> None:
    sample = SystemSampler().sample()
    assert sample.cpus >= 1 and 0 <= sample.cpu_percent <= 100
    assert 0 < sample.ram_used < sample.ram_total and sample.rss > 10 * 2**20
    if not sample.gpus:  # this machine: no driver, or no nvidia-ml-py
        assert "NVIDIA" in sample.gpu_note or "nvidia-ml-py" in sample.gpu_note
    (line,) = system_lines(sample, 80, 1)
    assert "cpu" in line and "rss" in line and "G" in line and len(line) <= 80


def test_gpu_figures_from_nvml(monkeypatch) -> None:
    fake = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sample = SystemSampler().sample()
    assert sample.gpu_names == ("NVIDIA H100 80GB HBM3",) * 2 and not sample.gpu_note
    first, second = sample.gpus
    assert math.isnan(first["temp"]) and math.isnan(first["process_mem"])
    assert second == {"index": 1.0, "util": 97.0, "mem_used": 31.0 * GIB, "mem_total": 80.0 * GIB,
                      "temp": 64.0, "power": 310.0, "power_limit": 700.0,
                      "process_mem": 3.0 * GIB}
    assert gpu_line(second, "H100") == "gpu1 H100 97% 31.0/80.0 GiB (this run 3.0) 64C 310/700 W"
    assert gpu_line(first, compact=True) == "gpu0 3% 1.0/80.0 GiB 310/700 W"
    lines = system_lines(sample, 160, 9)
    assert len(lines) == 3 and lines[1].startswith("gpu1 NVIDIA H100") and "cpu" in lines[2]
    assert system_lines(sample, 160, 2)[0].endswith("(+1 more GPUs)")
    (compact,) = system_lines(sample, 80, 1)
    assert compact.startswith("gpu0 3%") and " │ gpu1 97%" in compact

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")  # what this process can see
    (only,) = SystemSampler().sample().gpus
    assert only["util"] == 97.0 and only["index"] == 0.0  # CUDA's numbering: cuda:0

    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))
    broken = SystemSampler().sample()
    assert broken.gpus == () and broken.gpu_note == "no NVIDIA GPU (no driver)"


def test_the_sampler_thread_records_at_a_low_rate_and_stops(tmp_path: Path) -> None:
    seen: list[ev.System] = []
    record = tmp_path / "system.jsonl"
    sampler = SystemSampler(seen.append, step=lambda: 7, record=record, interval=0.02,
                            record_every=0.2).start()
    deadline = time.monotonic() + 20  # a condition, not a count of intervals: on loaded
    while time.monotonic() < deadline:  # cores the thread may wake up late
        recorded = len(read_jsonl(record))
        if recorded >= 2 and len(seen) > recorded:
            break
        time.sleep(0.02)
    sampler.close()
    emitted, recorded = len(seen), len(read_jsonl(record))
    assert recorded >= 2 and emitted > recorded  # every sample emitted, few recorded
    time.sleep(0.1)
    assert len(seen) == emitted and len(read_jsonl(record)) == recorded  # stopped
    assert all(s.step == 7 for s in seen)
    # the follower turns the newest record into the event watch shows
    (latest,) = [e for e in RunFollower(tmp_path).drain() if isinstance(e, ev.System)]
    assert latest.time == read_jsonl(record)[-1]["time"]
    record.write_text('{"step": 1, "time": "x"}\n[1]\n')  # hostile lines: skipped
    assert not [e for e in RunFollower(tmp_path).drain() if isinstance(e, ev.System)]


def _system_event(gpus: int) -> ev.System:
    gpu = {"index": 0.0, "util": 97.0, "mem_used": 31.0 * GIB, "mem_total": 80.0 * GIB,
           "temp": 64.0, "power": 310.0, "power_limit": 700.0, "process_mem": 3.0 * GIB}
    return ev.System(5, time.time(), 87.0, 16, 180.0, 40.0 * GIB, 128.0 * GIB, 0.8 * GIB,
                     tuple({**gpu, "index": float(i)} for i in range(gpus)),
                     ("NVIDIA H100 80GB HBM3",) * gpus, "" if gpus else "no NVIDIA GPU")


@pytest.mark.parametrize(("size", "gpus", "rows"), [((80, 24), 2, 1), ((160, 48), 2, 3),
                                                    ((160, 48), 0, 2)])
def test_the_dashboard_pane_fits_short_terminals_and_grows_on_tall_ones(size, gpus, rows):
    events = [ev.RunStarted("", "toy", "ring-8", "cuda", 0, 100, tiny().to_dict(), "ring"),
              ev.Metrics(5, 0, 1.0, 1.0, 0.5, 0.5, 0.5, 1.0, 1.0, 1e-3, 1e-3, 900.0, 10.0, 0.0,
                         data_wait=0.42),
              _system_event(gpus)]
    app = GantuiApp(scripted(events), None)

    async def main():
        async with app.run_test(size=size) as pilot:
            for _ in range(60):
                await pilot.pause(0.05)
                if app.system.display and app.system.size.height:
                    break
            text = str(app.system.render())
            # on wide terminals the pane shares a row with the event log and may be taller
            assert app.system.display and app.system.content_size.height >= rows
            assert len(text.splitlines()) == rows and "cpu 87% of 16" in text
            assert ("gpu0" in text) == bool(gpus) and ("gpu1" in text) == bool(gpus)
            assert "data 42%" in str(app.status.render())
            app.export_screenshot()

    asyncio.run(main())


@pytest.mark.parametrize("gpus", [0, 1, 2, 8])
def test_the_compact_line_fits_and_leads_with_staleness(gpus: int) -> None:
    sample = _system_event(gpus)
    (fresh,) = system_lines(sample, 78, 1)
    (old,) = system_lines(sample, 78, 1, "as of 12m00s ago")
    assert len(fresh) <= 78 and len(old) <= 78
    assert fresh.startswith("gpu0 97% 31.0/80.0G" if gpus else "no NVIDIA GPU")
    assert old.startswith("as of 12m00s ago │ ") and "cpu 87% of 16" in old
    assert ("GPUs" in fresh) == (gpus == 8) and ("+7 GPUs" in old) == (gpus == 8)
    (wide,) = system_lines(sample, 0, 1)  # no limit: every figure
    assert "proc 180%" in wide and "rss 0.8G" in wide and ("64C 310/700W" in wide) == bool(gpus)
    tall = system_lines(sample, 160, 9, "as of 12m00s ago")
    assert tall[-1].endswith("rss 0.8 GiB  (as of 12m00s ago)")


def test_a_stale_sample_says_so_at_80x24() -> None:
    sample = dataclasses.replace(_system_event(2), time=time.time() - 720)
    events = [ev.RunStarted("", "toy", "ring-8", "cuda", 0, 100, tiny().to_dict(), "ring"),
              sample]
    app = GantuiApp(scripted(events), None)

    async def main():
        async with app.run_test(size=(80, 24)) as pilot:
            for _ in range(60):
                await pilot.pause(0.05)
                if app.system.display and app.system.size.height:
                    break
            (text,) = str(app.system.render()).splitlines()
            assert text.startswith("as of 12m") and " │ gpu0 97%" in text
            assert len(text) <= app.system.content_size.width

    asyncio.run(main())


def test_data_wait_is_measured_and_a_slow_pipeline_warns(tmp_path: Path) -> None:
    """Decoding big images in the trainer's own thread (num_workers=0) for a tiny model: the
    trainer mostly waits for data, and says what to do about it."""
    from gantui.session import start

    root = make_image_folder(tmp_path / "big", n=48, size=640)
    cfg = tiny("dcgan-celeba", f"data={root}", "image_size=16", "batch_size=8", "steps=12",
               "log_every=2", "eval_every=0", "sample_every=100", "checkpoint_every=100")
    session = start(cfg, "dcgan-celeba", runs_dir=tmp_path / "runs", device="cpu")
    events = follow(session, 120)
    assert session.state == "finished", session.error
    waits = [r["data_wait"] for r in read_jsonl(session.run_dir / "metrics.jsonl")]
    # on the whole, not in every interval: a busy core (another test worker) can slow one
    # interval's steps as much as its decoding
    assert len(waits) == 6 and all(0 <= w <= 1 for w in waits) and sum(waits) / 6 > 0.25
    (alert,) = [e for e in events if isinstance(e, ev.Alert) and e.kind == "data"
                and "bottleneck" in e.message]
    assert "gantui prepare" in alert.message and "num_workers (now 0)" in alert.message
    assert any(isinstance(e, ev.System) for e in events)  # the session's sampler ran
    assert read_jsonl(session.run_dir / "system.jsonl")


def test_in_memory_data_never_waits(runs_dir: Path) -> None:
    from gantui.session import start

    session = start(tiny("ring-8", "eval_every=0"), "ring-8", runs_dir=runs_dir, device="cpu")
    follow(session, 60)
    waits = [r["data_wait"] for r in read_jsonl(session.run_dir / "metrics.jsonl")]
    assert waits and max(waits) < 0.2
