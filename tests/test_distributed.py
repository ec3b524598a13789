"""Data-parallel training on torchrun: 2 CPU ranks (gloo), real launches, kept few.

The launches run one at a time (two ranks already fill this machine's two cores).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gantui.data.sources import Shard, TensorBatches, epoch_permutation
from gantui.launch import TorchrunOutput

from .conftest import cli
from .owndata import write_cifar10
from .test_own_gan import MODEL as TINY_MODEL

ROOT = Path(__file__).resolve().parent.parent
RING = ["--preset", "ring-8", "--set", "log_every=10", "--set", "eval_every=0",
        "--set", "sample_every=1000", "--device", "cpu"]


def gantui(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gantui", *args], capture_output=True,
                          text=True, timeout=240, **kw)


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


def same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


# ---- pieces, in process --------------------------------------------------------------------

def test_shards_of_an_epoch_are_disjoint_equal_and_cover_it():
    n = 103
    whole = epoch_permutation(n, seed=5, epoch=2)
    parts = [epoch_permutation(n, 5, 2, Shard(r, 3)) for r in range(3)]
    assert all(len(p) == n // 3 for p in parts)
    seen = torch.cat(parts)
    assert len(set(seen.tolist())) == len(seen)  # disjoint
    assert set(seen.tolist()) <= set(whole.tolist())
    assert torch.equal(epoch_permutation(n, 5, 2, Shard(0, 1)), whole)  # one rank: as before

    images = torch.arange(40, dtype=torch.uint8).view(40, 1, 1, 1)
    streams = [TensorBatches(images, None, 4, 0, torch.device("cpu"), "t", Shard(r, 2))
               for r in range(2)]
    assert streams[0].steps_per_epoch == 5  # 20 images per rank
    firsts = [{int(v) for _ in range(5) for v in s.next()[0].add(1).mul(127.5).round()
               .flatten()} for s in streams]
    assert not firsts[0] & firsts[1] and len(firsts[0] | firsts[1]) == 40


def test_torchrun_output_keeps_workers_lines_and_sums_up_a_failure():
    report = """\
*****************************************
Setting OMP_NUM_THREADS environment variable for each process to be 1 in default
*****************************************
step 10/100 ep 0   loss_d 1.2
W1201 12:58:59.349000 16801 torch/distributed/elastic/multiprocessing/api.py:1028] Sending
E1201 12:58:59.415000 16801 torch/distributed/elastic/multiprocessing/api.py:1002] failed
Traceback (most recent call last):
  File "<frozen runpy>", line 198, in _run_module_as_main
  File "/x/torch/distributed/run.py", line 1142, in <module>
    main()
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
=======================================================
Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 16807)
Root Cause (first observed failure):
[0]:
  rank      : 1 (local_rank: 1)
  exitcode  : -9 (pid: 16808)  (SIGKILL)
=======================================================
"""
    out = TorchrunOutput()
    shown = [text for line in report.splitlines() for text in out.feed(line + "\n")]
    shown += out.flush()
    assert shown == ["step 10/100 ep 0   loss_d 1.2"]
    assert out.summary(1) == ("rank 1 (local_rank: 1) failed first (exit code -9 (SIGKILL)); "
                              "torchrun stopped the other ranks")
    # seen in the same second, torchrun may call the rank that only followed the first: the
    # one that ended because another rank failed (exit code 3) is not named
    followed = TorchrunOutput()
    for line in report.replace("-15 (pid: 16807)", "-9 (pid: 16807)  (SIGKILL)").replace(
            "-9 (pid: 16808)  (SIGKILL)", "3 (pid: 16808)").replace(
            "rank      : 0 (local_rank: 0)", "rank      : 2 (local_rank: 2)").splitlines():
        followed.feed(line)
    assert followed.summary(1).startswith("rank 2 (local_rank: 2) failed first (exit code -9 "
                                          "(SIGKILL))")
    # a worker's own traceback is not torchrun's: it is shown
    own = TorchrunOutput()
    lines = ["Traceback (most recent call last):", '  File "/x/gantui/engine/trainer.py"',
             "ValueError: boom", "next"]
    assert [t for line in lines for t in own.feed(line)] == lines


def test_rank_0_shows_the_users_own_traceback_before_its_line(tmp_path, capsys):
    """Rank 0 of a launch, whose user model raises on the dry batch: the user's file and line
    and their exception, then gantui's one line (which says the traceback is above)."""
    from gantui import config
    from gantui.engine.distributed import SINGLE
    from gantui.launch import _train_main

    model = tmp_path / "bad.py"
    model.write_text(TINY_MODEL.replace("return self.net(x).flatten()",
                                        "raise RuntimeError('boom in my forward')"))
    data = write_cifar10(tmp_path / "cifar", per_batch=4)
    sets = [f"model={model}", f"data={data}", "model_args.width=8", "nz=8", "batch_size=8"]
    code = _train_main(lambda: config.load("sngan-cifar10", sets), SINGLE, None,
                       torch.device("cpu"), None, [], "cpu", tmp_path / "runs", "bad")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("gantui: D of bad.py raised on the dry batch")
    assert "its traceback is above" in err[-1]
    assert f'File "{model}", line' in err[0] and err[-2] == "RuntimeError: boom in my forward"
    assert not (tmp_path / "runs" / "bad").exists()


def test_each_rank_resumes_its_own_augmentation_signs() -> None:
    """The adaptive chance's signs since its last adjustment are each rank's own: a resume on
    as many ranks gives each rank its entry of ``ranks``; on another number of ranks the chance
    carries on and the signs start afresh."""
    from types import SimpleNamespace

    from gantui.engine import checkpoint
    from gantui.engine.augment import AugmentChance
    from gantui.engine.distributed import World

    from .conftest import tiny

    def entry(signs: float) -> dict:
        return {"rng": {"torch": torch.get_rng_state(), "cuda": [], "noise": None},
                "data": {}, "augment": {"adapted": 0.25, "sum": signs, "count": 16,
                                        "batches": 6}}

    ranks = [entry(16.0), entry(-4.0)]
    state = {"step": 6, "world_size": 2, "rng": ranks[0]["rng"], "data": {},
             "augment": ranks[0]["augment"], "ranks": ranks}
    notes: list = []
    for world, signs, count in ((World(1, 2), -4.0, 16), (World(0, 1), 0.0, 0)):
        trainer = SimpleNamespace(
            world=world, device=torch.device("cpu"), cfg=tiny("dcgan-mnist", "steps=100"),
            noise=torch.Generator(), add_note=notes.append,
            batches=SimpleNamespace(load_state_dict=lambda data: None, state_dict=dict),
            augment=AugmentChance(0.0, torch.device("cpu")))
        checkpoint._restore_rank(trainer, None, state)
        restored = trainer.augment.state_dict()
        assert (restored["adapted"], restored["sum"], restored["count"]) == (0.25, signs, count)
    assert len(notes) == 1  # "no longer exactly", on the single process


def said(done: subprocess.CompletedProcess) -> str:
    """What the ranks and gantui printed, without torchrun's own traceback and log lines
    (they push the ranks' last lines out of an assertion's message)."""
    lines = [line for line in (done.stdout + done.stderr).splitlines()
             if "torch/distributed/elastic" not in line and "torch.distributed" not in line
             and not line.startswith(("  File ", "    "))]
    return "\n".join(lines)[-4000:]


# ---- real launches ----------------------------------------------------------------------

@pytest.mark.slow  # a torchrun launch of two ranks, paused 7 s
def test_ranks_agree_on_weights_commands_pause_checkpoint_and_stop(tmp_path):
    """Rank 0 steered as gantui ctl would: a live lr_g change lands at the same step on both
    ranks, a pause longer than twice the collective timeout survives, a checkpoint holds
    both ranks' state, a stop ends both, and the weights stay identical."""
    out = tmp_path / "out"
    out.mkdir()
    # 3 s: a 2 s bound failed now and then on loaded cores (rank 1 aborted in a collective)
    env = dict(os.environ, GANTUI_DIST_TIMEOUT="3", OMP_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         f"--log-dir={tmp_path / 'torchrun'}", str(ROOT / "tests" / "dist_probe.py"),
         str(tmp_path / "runs"), str(out), "7"],
        capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, said(done)
    r0, r1 = (json.loads((out / f"rank-{r}.json").read_text()) for r in (0, 1))
    assert r0["params"] == r1["params"]
    assert r0["state"] == r1["state"] == "stopped" and r0["step"] == r1["step"]
    assert r0["changed"] == r1["changed"] == [[r0["set_ack"], "lr_g", 1e-4]]
    assert r1["lr_g"] == 1e-4
    paused = [s for s in r1["states"] if s[1] == "paused"]
    assert paused == [[r0["pause_ack"], "paused"]] and r0["resume_ack"] == r0["pause_ack"]
    assert r0["states"] == r1["states"]  # the same lifecycle, step by step
    ckpt = load(Path(r0["checkpoint"]["path"]))
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    noise = [r["rng"]["noise"] for r in ckpt["ranks"]]
    assert not torch.equal(noise[0], noise[1])  # each rank its own noise
    assert Path(r0["stop"]["path"]).is_file()
    # rank 1 wrote nothing: the run directory holds what rank 0 journaled, once
    events = [json.loads(line) for line in
              (tmp_path / "runs" / "probe" / "events.jsonl").read_text().splitlines()]
    assert sum(e.get("event") == "set" for e in events) == 1


@pytest.mark.slow  # three torchrun launches of two ranks each
def test_sigterm_and_resume_on_two_ranks_is_bit_exact(tmp_path):
    """gantui train --nproc-per-node 2 with the user's own model file (spectral norm put on
    its D by gantui, an EMA of its G, adaptive augmentation) on CIFAR-10-format data:
    stopped by SIGTERM mid-run and resumed, it ends with the same weights, optimizers, RNG,
    augmentation chance and data position (a shard of an epoch-based source) as a straight
    run; resumed on one process it warns that
    exactness is lost and carries on."""
    runs = tmp_path / "runs"
    model = tmp_path / "tiny_gan.py"
    model.write_text(TINY_MODEL)
    data = write_cifar10(tmp_path / "cifar", per_batch=18)  # 45 images a rank: 5 steps an epoch
    sets = [f"model={model}", f"data={data}", "model_args.width=16", "nz=8", "batch_size=8",
            "d_steps=1", "spectral_norm=true", "ema=0.9", "steps=60", "log_every=10",
            "eval_every=0", "sample_every=1000", "diffaug=translation", "ada_target=0.01"]
    common = ["train", "--nproc-per-node", "2", "--no-ui", "--preset", "sngan-cifar10",
              "--device", "cpu", *[f"--set={s}" for s in sets], "--runs-dir", str(runs)]
    straight = gantui(*common, "--name", "A")
    assert straight.returncode == 0, said(straight)
    assert "a global batch of 16" in straight.stdout
    assert "CIFAR-10: 90 training images" in straight.stdout
    assert "torch/distributed" not in straight.stdout + straight.stderr  # torchrun's noise

    log = tmp_path / "b.log"
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "gantui", *common, "--name", "B"],
                                stdout=fh, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 120
        while "step 20/60" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(120) == 0, log.read_text()[-2000:]
    text = log.read_text()
    assert "(stop)" in text and "--nproc-per-node 2 --resume" in text, text[-2000:]
    stopped = sorted((runs / "B" / "checkpoints").glob("ckpt-*.pt"))[-1]
    assert int(stopped.stem.split("-")[1]) < 60

    resumed = gantui("train", "--nproc-per-node", "2", "--no-ui", "--resume", str(runs / "B"))
    assert resumed.returncode == 0, said(resumed)
    assert "changed since this checkpoint" not in resumed.stdout  # the same model file
    a = load(runs / "A" / "checkpoints" / "ckpt-00000060.pt")
    b = load(runs / "B" / "checkpoints" / "ckpt-00000060.pt")
    for key in ("G", "D", "G_ema", "opt_g", "opt_d", "rng", "data", "ranks", "model_source",
                "augment"):
        assert same(a[key], b[key]), key
    assert a["augment"]["adapted"] > 0  # summed over both ranks' real batches
    assert a["model_source"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert any(k.endswith("parametrizations.weight.original") for k in a["D"])
    assert a["G_ema"] is not None

    single = cli("train", "--no-ui", "--resume", str(runs / "A"), "--set", "steps=70")
    assert single.returncode == 0, said(single)
    assert "no longer exactly" in single.stdout
    assert "finished 70 steps" in single.stdout


@pytest.mark.slow  # a torchrun launch of two ranks, one killed
def test_a_killed_worker_ends_the_launch_with_one_line_and_intact_checkpoints(tmp_path):
    runs = tmp_path / "runs"
    log = tmp_path / "k.log"
    args = ["train", "--nproc-per-node", "2", "--no-ui", *RING, "--set", "steps=100000",
            "--set", "checkpoint_every=30", "--runs-dir", str(runs), "--name", "K"]
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "gantui", *args], stdout=fh,
                                stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 120
            while not list((runs / "K" / "checkpoints").glob("ckpt-*.pt")):
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()
                time.sleep(0.1)
            worker = next(pid for pid in _children(proc.pid)
                          if b"LOCAL_RANK=1\0" in Path(f"/proc/{pid}/environ").read_bytes())
            os.kill(worker, signal.SIGKILL)
            started = time.monotonic()
            code = proc.wait(60)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
    text = log.read_text()
    assert code == 1, text[-2000:]
    assert took < 40, took
    assert "exit code 3" not in text  # rank 0 ended because rank 1 did: rank 1 is named
    assert text.count("another rank stopped answering") == 1  # said once, not three times
    assert "rank 1 (local_rank: 1) failed first (exit code -9 (SIGKILL))" in text
    assert "Traceback" not in text
    for path in (runs / "K" / "checkpoints").glob("ckpt-*.pt"):
        assert load(path)["world_size"] == 2  # every checkpoint whole and loadable


def _children(pid: int) -> list[int]:
    """Every descendant of ``pid`` (torchrun runs in its own session below the launcher)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").iterdir():
            kids = (task / "children").read_text().split()
            found += [int(k) for k in kids]
            todo += [int(k) for k in kids]
    return found


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (NCCL, SyncBatchNorm)")
def test_two_gpu_ranks_with_sync_batchnorm(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    done = gantui("train", "--nproc-per-node", "2", "--no-ui", "--preset", "dcgan-mnist-plain",
                  "--set", "steps=40", "--set", "sync_bn=true", "--device", "cuda",
                  "--runs-dir", str(tmp_path))
    assert done.returncode == 0, said(done)
    assert "a global batch of" in done.stdout


def test_the_launcher_refuses_what_this_machine_cannot_run(tmp_path):
    from gantui.system import available_cores

    too_many = cli("train", "--nproc-per-node", str(available_cores() + 1), "--device",
                   "cpu", "--preset", "ring-8", "--runs-dir", str(tmp_path))
    assert too_many.returncode == 1 and "use at most" in too_many.stderr
    assert "Traceback" not in too_many.stderr
    one_gpu = cli("train", "--nproc-per-node", "2", "--device", "cuda:1", cwd=tmp_path)
    assert one_gpu.returncode == 1 and "cuda:LOCAL_RANK" in one_gpu.stderr
    if not torch.cuda.is_available():  # the launcher itself imports torch only near a GPU
        no_gpu = cli("train", "--nproc-per-node", "2", "--device", "cuda", "--preset",
                     "ring-8", "--runs-dir", str(tmp_path))
        assert no_gpu.returncode == 1 and "no CUDA device is available here" in no_gpu.stderr
    bad = cli("train", "--nproc-per-node", "2", "--device", "cpu", "--preset", "nope",
              "--runs-dir", str(tmp_path))
    assert bad.returncode == 1 and "unknown preset" in bad.stderr
    assert not any(tmp_path.iterdir())  # refused before torchrun: nothing made
