"""`gantui sweep`: the grid, study files, resuming after a kill, parallel threads, the table."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gantui.errors import GantuiError
from gantui.studies import sweep as sweep_mod
from gantui.studies.sweep import SweepError

from .conftest import cli

TINY = ["--set", "g_hidden=32,32", "--set", "d_hidden=32,32", "--set", "batch_size=64",
        "--set", "log_every=10", "--set", "sample_every=200", "--set", "checkpoint_every=40",
        "--set", "eval_every=100"]
KILLED_STEPS = 400
"""Steps of each run in the killed-sweep test: the third run starts as the first ends and is
stopped once the second has, so it cannot finish first."""


def test_vary_parsing_and_the_grid() -> None:
    vary = sweep_mod.parse_vary(["ngf=32,64", "loss=hinge,lsgan", "g_hidden=128,128;256"])
    assert vary == {"ngf": [32, 64], "loss": ["hinge", "lsgan"],
                    "g_hidden": [(128, 128), (256,)]}
    points = sweep_mod.grid({"ngf": [32, 64], "loss": ["hinge", "lsgan"]}, [0, 1])
    assert len(points) == 8 and points[0] == {"ngf": 32, "loss": "hinge", "seed": 0}
    assert sweep_mod.run_name({"lr_g": 2e-4, "g_hidden": (128, 128), "seed": 1}) == \
        "lr_g=0.0002-g_hidden=128x128-seed=1"
    zipped = sweep_mod.grid({"lr_d": [1e-3, 1e-4], "lr_g": [2e-3, 2e-4]}, [0], zipped=True)
    assert [(p["lr_d"], p["lr_g"]) for p in zipped] == [(1e-3, 2e-3), (1e-4, 2e-4)]
    for items, message in ((["nope=1,2"], "unknown key 'nope'"), (["ngf="], "needs values"),
                           (["ngf=32,,64"], "needs values"), (["ngf=32,32"], "listed twice"),
                           (["ngf=32", "ngf=64"], "given twice"), (["ngf"], "KEY=V1,V2"),
                           (["ngf=big"], "ngf"), (["seed=1,2"], "--seeds")):
        with pytest.raises(GantuiError, match=message):
            sweep_mod.parse_vary(items)
    with pytest.raises(SweepError, match="one length"):
        sweep_mod.grid({"lr_d": [1e-3, 1e-4], "lr_g": [2e-3]}, [0], zipped=True)
    with pytest.raises(SweepError, match="both varied and fixed"):
        sweep_mod.plan("ring-8", ["pack=1,2"], sets=["pack=2"])
    with pytest.raises(SweepError, match="grid point pack=3-seed=0: batch_size"):
        sweep_mod.plan("ring-8", ["pack=1,3"])  # every point's config is built up front
    with pytest.raises(SweepError, match="--name"):
        sweep_mod.plan("ring-8", ["pack=1,2"], name="../escape")


def test_every_shipped_study_plans_and_is_listed(tmp_path: Path) -> None:
    names = sweep_mod.study_names()
    assert {"ngf", "ndf", "lr", "nz", "init", "loss", "epochs"} <= set(names)
    for name in names:
        study = sweep_mod.load_study(name)
        plan = sweep_mod.plan(study.preset, study.vary, study.seeds, study.sets,
                              zipped=study.zipped)
        assert len(plan.runs) >= 2 and study.description
    lr = sweep_mod.load_study("lr")
    assert lr.zipped and len(sweep_mod.plan(lr.preset, lr.vary, zipped=True).runs) == 6
    listed = cli("presets", cwd=tmp_path)
    assert listed.returncode == 0 and "studies (gantui sweep --study NAME" in listed.stdout
    assert all(name in listed.stdout for name in names)
    bad = tmp_path / "bad.toml"
    bad.write_text("[vary]\nngf = []\n")
    with pytest.raises(SweepError, match="non-empty list"):
        sweep_mod.load_study(str(bad))
    with pytest.raises(SweepError, match="unknown study"):
        sweep_mod.load_study("nope")


def _sweep_args(tmp_path: Path, *extra: str, steps: int = 300) -> list[str]:
    return [sys.executable, "-m", "gantui", "sweep", "--preset", "ring-8", "--vary",
            "pack=1,2,4", "--seeds", "1", "--set", f"steps={steps}",
            *TINY, "--runs-dir", str(tmp_path / "runs"), "--device", "cpu", *extra]


def _states(sweep_dir: Path) -> dict[str, str]:
    from gantui.run.lock import is_locked
    from gantui.run.runs import run_state

    return {p.name: run_state(p, is_locked) for p in sweep_dir.iterdir()
            if (p / "config.toml").is_file()}


@pytest.mark.slow  # four runs in child processes, killed half-way, then run to the end
def test_a_killed_sweep_resumes_where_it_stopped(tmp_path: Path) -> None:
    """Three values, two at a time: SIGTERM once two have finished and the third is past a
    checkpoint (it checkpoints and stops), rerun: only the third resumes."""
    sweep_dir = tmp_path / "runs" / "ring-8-pack"
    args = _sweep_args(tmp_path, "--parallel", "2", steps=KILLED_STEPS)
    proc = subprocess.Popen(args, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        # 2 runs done, the third started and past its first checkpoint (a child still
        # starting up would die of the signal before it journals anything)
        states = _states(sweep_dir) if sweep_dir.exists() else {}
        running = [n for n, s in states.items() if s not in ("finished",)]
        past = all(list((sweep_dir / n / "checkpoints").glob("ckpt-*.pt")) for n in running)
        if list(states.values()).count("finished") >= 2 and len(states) == 3 and past:
            break
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "rerun the same command to continue" in err
    before = _states(sweep_dir)
    finished_before = sorted(n for n, s in before.items() if s == "finished")
    assert len(finished_before) == 2
    # the child running at the signal checkpointed and stopped
    assert sorted(before.values()) == ["finished", "finished", "stopped"]
    kept = {n: (sweep_dir / n / "metrics.jsonl").read_bytes() for n in finished_before}

    again = subprocess.run(args, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "2 of 3 runs already done" in again.stdout and "resumed (stopped)" in again.stdout
    assert set(_states(sweep_dir).values()) == {"finished"} and len(_states(sweep_dir)) == 3
    for name, data in kept.items():  # finished runs were left alone
        assert (sweep_dir / name / "metrics.jsonl").read_bytes() == data
    rows = list(csv.DictReader((sweep_dir / "summary.csv").open()))
    assert len(rows) == 3 and {r["state"] for r in rows} == {"finished"}
    assert {r["step"] for r in rows} == {str(KILLED_STEPS)}
    assert all(r["metric"] == "modes" for r in rows)
    assert set(rows[0]) >= {"pack", "seed", "final", "best", "loss_d", "loss_g",
                            "img_per_s", "wall_s"}
    md = (sweep_dir / "summary.md").read_text()
    assert md.count("| finished |") == 3 and "| pack | seed |" in md
    assert (sweep_dir / "summary.png").read_bytes()[:4] == b"\x89PNG"
    spec = json.loads((sweep_dir / "sweep.json").read_text())
    assert spec["vary"] == {"pack": [1, 2, 4]}
    assert spec["seeds"] == [0] and len(spec["runs"]) == 3

    from gantui.system import available_cores

    each = max(1, available_cores() // 2)  # --parallel 2 divides the cores between children
    assert f"2 at a time ({each} CPU thread(s) each)" in again.stdout
    for name in kept:
        log = (sweep_dir / "logs" / f"{name}.log").read_text()
        assert f"CPU threads: {each} (the threads key)" in log
    # nothing left to start: in this process
    third = cli(*_sweep_args(tmp_path, steps=KILLED_STEPS)[3:])
    assert third.returncode == 0 and "3 of 3 runs already done" in third.stdout
    other = cli("sweep", "--preset", "ring-8", "--vary", "pack=1,4", "--runs-dir",
                str(tmp_path / "runs"), "--name", "ring-8-pack", cwd=tmp_path)
    assert other.returncode == 1 and "holds a different sweep" in other.stderr


def test_bad_sweeps_get_one_line(tmp_path: Path) -> None:
    for args, message in ((["--vary", "nope=1"], "unknown key"), ([], "nothing to sweep"),
                          (["--vary", "ngf="], "needs values"), (["--study", "nope"],
                                                                 "unknown study"),
                          (["--vary", "ngf=8", "--seeds", "0"], "--seeds")):
        out = cli("sweep", *args, "--runs-dir", str(tmp_path), cwd=tmp_path)
        assert out.returncode == 1 and message in out.stderr, (args, out.stderr)
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
