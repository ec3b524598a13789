"""Speed: the bench's bare loop is the trainer's arithmetic, `gantui bench` end to end, and
the speed options (compile, channels_last, tf32) keep training and steering intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gantui import events as ev
from gantui.engine.control import Controller
from gantui.engine.trainer import Trainer
from gantui.headless import follow
from gantui.perf.bare import BareLoop, measure_data, measure_loop
from gantui.perf.peaks import peak_flops
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start

from .conftest import cli, make_image_folder, straight_and_resumed, tiny

CPU = torch.device("cpu")


@pytest.mark.parametrize(("preset", "extra"), [
    ("ring-8", ()), ("dcgan-mnist-plain", ()),
    ("cdcgan-mnist", ("ac_weight=0",)),  # AC-GAN's classifier is the trainer's, as InfoGAN's Q
    ("dcgan-mnist-plain", ("r1_gamma=0.1", "r1_every=3")),  # lazy R1 on steps 0 and 3 of 4
    ("dcgan-mnist", ("diffaug=translation,cutout",)),  # clusters, DiffAugment and EMA
    ("dcgan-mnist-plain", ("diffaug=color,translation", "ada_target=0.01")),  # adapted: up
    ("dcgan-mnist-plain", ("instance_noise=0.1", "lr_decay=cosine")),
    ("stacked-mnist", ()),  # three cluster codes; bfloat16 autocast where the CPU has it
    ("dcgan-mnist", ("amp=false",))])
def test_the_bare_loop_trains_exactly_what_the_trainer_trains(preset: str, extra: tuple,
                                                              tmp_path: Path) -> None:
    """Same seed, same steps: bit-identical weights, so bench ratios compare like with like."""
    cfg = tiny(preset, "eval_every=0", "d_steps=2", *extra)
    bare = BareLoop(cfg, CPU)
    trainer = Trainer(cfg, store=RunStore.create(tmp_path, "t", cfg.to_dict()),
                      emit=lambda e: None, controller=Controller(), device=CPU, preset=preset,
                      name="t")
    for _ in range(4):
        bare.step()
        if cfg.lr_decay != "none":  # as the run loop does before each step (ring-8: linear)
            trainer.apply_optimizer_settings()
        for _ in range(cfg.d_steps):
            trainer.d_step()
        trainer.g_step()
        trainer.step += 1  # as the run loop counts (lazy R1 reads it)
    pairs = [(bare.G, trainer.G), (bare.D, trainer.D)]
    assert (bare.G_ema is None) == (trainer.G_ema is None) == (not cfg.ema)
    if cfg.ema:
        pairs.append((bare.G_ema, trainer.G_ema))
    for ours, theirs in pairs:
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)


def test_the_bench_names_what_its_bare_loop_leaves_out() -> None:
    from gantui.perf.bench import BenchResult, _not_in_bare, report

    assert _not_in_bare(tiny("dcgan-mnist")) == ""  # clusters, diffaug and EMA are in it
    assert _not_in_bare(tiny("grid-25")) == "InfoGAN's Q"
    assert _not_in_bare(tiny("ecgan-mnist")) == "the encoder"
    assert _not_in_bare(tiny("cdcgan-mnist")) == "AC-GAN's classifier"
    result = BenchResult("grid-25", "cpu", "cpu", 40, bare_leaves_out="InfoGAN's Q")
    for mode in result.modes:
        result.rounds[mode].append(100.0)
    assert "the bare loop trains without InfoGAN's Q" in report(result)
    result.bare_leaves_out = ""
    assert "trains without" not in report(result)


def test_flops_and_peaks() -> None:
    loop = BareLoop(tiny("dcgan-mnist-plain"), CPU)
    flops = loop.flops_per_image()
    assert 1e5 < flops < 1e9  # a toy DCGAN: well under a GFLOP per image
    assert peak_flops("NVIDIA H100 80GB HBM3", "bf16") == pytest.approx(989.4e12)
    assert peak_flops("NVIDIA H100 PCIe", "tf32") == pytest.approx(378e12)
    assert peak_flops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 tensor cores
    assert peak_flops("some future GPU", "fp32") is None
    assert measure_data(tiny("dcgan-mnist-plain"), CPU, 5)["img_per_s"] > 0


@pytest.mark.slow  # the bench starts a fresh process per mode
def test_bench_through_the_cli(tmp_path: Path) -> None:
    # the fewest steps the bench accepts (two log intervals): it still starts every mode's
    # fresh process (bare loop, headless, dashboard in a pty, data stream)
    out = cli("bench", "--preset", "ring-8", "--steps", "40", "--rounds", "1",
              "--device", "cpu", "--set", "g_hidden=32,32", "--set", "d_hidden=32,32",
              "--set", "batch_size=64", "--set", "log_every=20", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert set(result["img_per_s"]) == {"bare", "headless", "dashboard"}
    assert all(v > 0 for v in result["img_per_s"].values())
    # toy runs on a shared machine: the ratios are measured, not judged, here
    assert all(0 < r < 100 for r in result["ratio"].values())
    assert result["data_img_per_s"] > 0 and result["flops_per_image"] > 0
    assert "round 1/1  dashboard" in out.stderr  # progress goes to stderr with --json
    assert not list(tmp_path.iterdir())  # the bench's runs live in a temporary folder

    for args, message in ((["--steps", "50"], "too few"), (["--preset", "nope"], "nope"),
                          (["--set", "lr_g=-1"], "lr_g"),
                          (["--modes", "bare,fast"], "expected a comma list of bare")):
        bad = cli("bench", "--preset", "ring-8", "--device", "cpu", *args, cwd=tmp_path)
        assert bad.returncode == 1 and message in bad.stderr and "Traceback" not in bad.stderr


def test_a_bench_of_some_modes_reports_what_it_measured() -> None:
    from gantui.perf.bench import BenchResult, parse_modes, report

    assert parse_modes("dashboard, bare") == ("bare", "dashboard")  # the bench's order
    result = BenchResult("ring-8", "cpu", "x86_64", 40, modes=parse_modes("headless"),
                         data_img_per_s=5000.0, data_note="ring-8 mixture")
    result.rounds["headless"] = [100.0, 120.0]
    text = report(result)
    assert "headless          110.0        --" in text and "\nbare" not in text
    assert "MISSED" not in text and " met" not in text  # no target without the bare loop
    assert "45.5x what headless training consumes" in text and "compute" not in text
    assert set(result.to_dict()["img_per_s"]) == {"headless"} and not result.to_dict()["ratio"]
    dashboard = BenchResult("ring-8", "cpu", "x86_64", 40, modes=("dashboard",),
                            data_img_per_s=5000.0, data_note="ring-8 mixture")
    dashboard.rounds["dashboard"] = [90.0]
    assert "its headroom needs the headless mode" in report(dashboard)


def test_speed_options_are_no_ops_on_the_cpu(tmp_path: Path) -> None:
    """channels_last and tf32 apply to CUDA only: on the CPU the run is bit-identical."""
    weights = []
    for extra in ((), ("channels_last=true", "tf32=false")):
        cfg = tiny("dcgan-mnist-plain", "eval_every=0", *extra)
        trainer = Trainer(cfg, store=RunStore.create(tmp_path, f"r{len(weights)}",
                                                     cfg.to_dict()),
                          emit=lambda e: None, controller=Controller(), device=CPU,
                          preset="p", name="r")
        for _ in range(3):
            trainer.d_step()
            trainer.g_step()
        weights.append(trainer.G.state_dict())
    for a, b in zip(weights[0].values(), weights[1].values(), strict=True):
        assert torch.equal(a, b)


def test_the_bare_loop_stops_the_cache_reader_it_started(tmp_path: Path, monkeypatch) -> None:
    """As the trainer does: a reader thread left pinning memory at exit aborted the bench's
    process on an H200 ("terminate called without an active exception")."""
    import threading

    from gantui.data.cache import prepare

    monkeypatch.setenv("GANTUI_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "imgs", n=12, size=16)
    prepare(root, 16, 3, workers=0)
    cfg = tiny("dcgan-celeba", f"data={root}", "image_size=16", "batch_size=4", "log_every=2")
    assert measure_loop(cfg, CPU, 4)["img_per_s"] > 0
    assert not [t for t in threading.enumerate() if t.name == "gantui-cache-reader"]


def test_channels_last_yields_to_compile_and_says_so() -> None:
    """Measured on an H200 (torch 2.11): compile with NHWC weights fails inductor's stride
    check in G's first transposed convolution's backward, so compile decides layouts alone."""
    from gantui.engine.fast import speed_notes, uses_channels_last

    cuda = torch.device("cuda")  # a device object only: nothing runs on it
    assert uses_channels_last(tiny("dcgan-mnist-plain", "channels_last=true"), cuda)
    both = tiny("dcgan-mnist-plain", "channels_last=true", "compile=true")
    assert not uses_channels_last(both, cuda)
    assert speed_notes(both, cuda) == ["channels_last is not applied with compile: "
                                       "torch.compile picks the convolution layouts itself"]
    for quiet, device in ((both, CPU), (tiny("dcgan-mnist-plain", "channels_last=true"), cuda),
                          (tiny("dcgan-mnist-plain", "compile=true"), cuda)):
        assert speed_notes(quiet, device) == []


AMP_ON = "amp: the training steps run in bfloat16 (weights, losses, previews and evaluation " \
    "in float32)"
NO_BF16_CPU = "amp is not applied: this CPU has no bfloat16 instructions (AVX512-BF16 or AMX), " \
    "where float32 is faster; training runs in float32"


def test_amp_on_the_cpu_trains_in_bfloat16_where_it_can_and_says_so_where_not(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``amp`` on a CPU with bfloat16 instructions changes the arithmetic (not the run's
    shape) and resumes exactly; on one without, it is float32 with one note."""
    from gantui.engine import fast

    base = ["eval_every=0", "checkpoint_every=3", "sample_every=2", "log_every=3", "ema=0.9"]
    a, b = straight_and_resumed(runs_dir, "dcgan-mnist-plain", [*base, "amp=true"], 6)
    for part in ("G", "D", "G_ema"):
        for name, tensor in a[part].items():
            assert tensor.dtype != torch.bfloat16, (part, name)  # autocast: weights stay fp32
            assert torch.equal(tensor, b[part][name]), (part, name)
    plain = start(tiny("dcgan-mnist-plain", *base, "steps=6"), "dcgan-mnist-plain",
                  runs_dir=runs_dir, name="fp32", device="cpu")
    follow(plain, 120)
    fp32 = load_checkpoint_file(RunStore.open(plain.run_dir).checkpoint_paths()[-1])
    same = all(torch.equal(t, fp32["G"][k]) for k, t in a["G"].items())
    amp = tiny("dcgan-mnist", "amp=true")
    assert same == (not fast.cpu_has_bf16())  # this CPU's answer, whichever it is
    assert fast.speed_notes(amp, CPU) == [AMP_ON if fast.cpu_has_bf16() else NO_BF16_CPU]
    from gantui.perf.bench import _device_facts  # what `gantui bench` reports

    assert _device_facts("cpu", ["amp=true"], "dcgan-mnist")[2] == (
        "bf16" if fast.cpu_has_bf16() else "fp32")
    assert _device_facts("cpu", ["amp=false"], "dcgan-mnist")[2] == "fp32"

    monkeypatch.setattr(fast, "cpu_has_bf16", lambda: False)  # a CPU without bfloat16
    assert not fast.uses_amp(amp, CPU)
    assert fast.speed_notes(amp, CPU) == [NO_BF16_CPU]
    with monkeypatch.context() as arm:  # an Arm CPU lacks another instruction set
        arm.setattr(fast.platform, "machine", lambda: "aarch64")
        assert fast.speed_notes(amp, CPU) == [NO_BF16_CPU.replace(
            "AVX512-BF16 or AMX", "the BF16 extension")]
    # the run says so once, and trains what float32 trains
    without = start(tiny("dcgan-mnist-plain", *base, "amp=true", "steps=6"), "dcgan-mnist-plain",
                    runs_dir=runs_dir, name="no-bf16", device="cpu")
    said = [e.message for e in follow(without, 120) if isinstance(e, ev.Note)]
    assert said.count(NO_BF16_CPU) == 1 and AMP_ON not in said
    last = load_checkpoint_file(RunStore.open(without.run_dir).checkpoint_paths()[-1])
    assert all(torch.equal(t, fp32["G"][k]) for k, t in last["G"].items())
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda: True)
    assert fast.uses_amp(amp, CPU) and fast.speed_notes(amp, CPU) == [AMP_ON]
    with fast.autocast(fast.uses_amp(amp, CPU), CPU):
        assert torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with fast.autocast(False, CPU):
        assert not torch.is_autocast_enabled("cpu")
    assert not fast.uses_amp(tiny("dcgan-mnist-plain"), CPU)
    assert fast.uses_amp(tiny("dcgan-mnist"), CPU) and fast.uses_amp(tiny("stacked-mnist"), CPU)


def test_a_resume_in_another_precision_says_it_is_no_longer_exact(
        runs_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint records what its steps ran in: resumed where bfloat16 is not native, the
    run continues in float32 and says so; resumed in the same precision it says nothing."""
    import shutil

    from gantui.engine import fast

    monkeypatch.setattr(fast, "cpu_has_bf16", lambda: True)
    sets = ["eval_every=0", "checkpoint_every=2", "sample_every=2", "log_every=2", "amp=true",
            "steps=4"]
    run = start(tiny("dcgan-mnist-plain", *sets), "dcgan-mnist-plain", runs_dir=runs_dir,
                name="bf16", device="cpu")
    follow(run, 120)
    assert load_checkpoint_file(RunStore.open(run.run_dir).checkpoint_paths()[-1])[
        "precision"] == "bfloat16"

    def resumed(name: str) -> list[str]:
        twin = runs_dir / name
        shutil.copytree(run.run_dir, twin)
        RunStore.open(twin).checkpoint_paths()[-1].unlink()
        again = start(None, "", resume=twin, device="cpu")
        said = [e.message for e in follow(again, 120) if isinstance(e, ev.Alert)]
        assert again.state == "finished"
        return [m for m in said if "no longer exactly" in m]

    assert resumed("same") == []
    monkeypatch.setattr(fast, "cpu_has_bf16", lambda: False)
    assert resumed("other") == [
        "the checkpoint's steps ran in bfloat16 and this machine runs them in float32: "
        "training continues, but no longer exactly as it would have in bfloat16"]
    last = load_checkpoint_file(RunStore.open(runs_dir / "other").checkpoint_paths()[-1])
    assert last["precision"] == "float32"


@pytest.mark.parametrize(("machine", "avx512_bf16", "amx", "onednn", "native"), [
    ("x86_64", True, False, True, True),  # AVX512-BF16 (Cooper Lake, Zen 4)
    ("x86_64", False, True, True, True),  # AMX (Sapphire Rapids)
    ("x86_64", False, False, True, False),  # AVX-512 alone: oneDNN says yes, it emulates
    ("x86_64", False, False, False, False),  # AVX2
    ("aarch64", False, False, True, True),  # Arm's BF16 extension, as oneDNN reads it
    ("aarch64", False, False, False, False)])
def test_bfloat16_is_native_only_with_its_instructions(
        monkeypatch: pytest.MonkeyPatch, machine: str, avx512_bf16: bool, amx: bool,
        onednn: bool, native: bool) -> None:
    from gantui.engine import fast

    monkeypatch.setattr(fast.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn,
                        raising=False)
    fast.cpu_has_bf16.cache_clear()
    try:
        assert fast.cpu_has_bf16() is native
    finally:
        fast.cpu_has_bf16.cache_clear()


@pytest.mark.parametrize(("capability", "applied"), [((8, 0), True), ((9, 0), True),
                                                      ((7, 5), False), (None, False)])
def test_amp_on_a_gpu_needs_native_bfloat16(monkeypatch: pytest.MonkeyPatch,
                                            capability: tuple | None, applied: bool) -> None:
    """Ampere and newer; a T4 or V100 would emulate bfloat16, slower than float32."""
    from gantui.engine import fast

    monkeypatch.setattr(fast, "gpu_capability", lambda index: capability)
    cuda, amp = torch.device("cuda"), tiny("dcgan-mnist", "amp=true")
    assert fast.uses_amp(amp, cuda) is applied
    assert not fast.uses_amp(tiny("dcgan-mnist", "amp=false"), cuda)
    (note,) = fast.speed_notes(amp, cuda)
    if applied:
        assert note == AMP_ON
    else:
        assert note.startswith("amp is not applied: this GPU has no native bfloat16 (")
        assert ("compute capability 7.5; it needs 8.0" in note) == (capability == (7, 5))


@pytest.mark.slow  # inductor compiles G and D on the CPU: half a minute
def test_a_compiled_run_is_steered_checkpointed_and_resumed_eagerly(runs_dir: Path) -> None:
    """torch.compile on the CPU (inductor): live changes land, R1 steps stay eager, the
    checkpoint holds plain module keys and resumes without compile."""
    cfg = tiny("ring-8", "compile=true", "steps=40", "checkpoint_every=20", "r1_gamma=1",
               "r1_every=4", "eval_every=0")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    session.controller.set({"lr_g": 5e-4, "d_steps": 2})
    session.controller.pause()
    session.controller.checkpoint()
    session.controller.resume()
    events = follow(session, 600)
    assert session.state == "finished", session.error
    changed = {e.key for e in events if e.__class__.__name__ == "Changed"}
    assert changed == {"lr_g", "d_steps"}
    state = load_checkpoint_file(runs_dir / session.run_dir.name / "checkpoints" /
                                 "ckpt-00000040.pt")
    assert not any(k.startswith("_orig_mod") for k in state["G"])
    assert state["config"]["compile"] is True
    resumed = start(None, "", resume=session.run_dir, sets=["steps=50", "compile=false"],
                    device="cpu")
    follow(resumed, 120)
    assert resumed.state == "finished" and resumed.trainer.step == 50


def test_threads_key_and_its_sane_default(monkeypatch) -> None:
    from gantui.engine import fast

    before = torch.get_num_threads()
    try:
        monkeypatch.setattr(fast, "available_cores", lambda: 2)
        torch.set_num_threads(8)  # torch's default on a big host inside a 2-CPU container
        assert fast.set_threads(tiny()) == "CPU threads: 2 (auto, 2 core(s) available)"
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)  # a caller's deliberate lower setting is kept
        fast.set_threads(tiny())
        assert torch.get_num_threads() == 1
        note = fast.set_threads(tiny("ring-8", "threads=3"))
        assert torch.get_num_threads() == 3 and "the threads key" in note
        assert "expect contention" in note
    finally:
        torch.set_num_threads(before)
    assert fast.available_cores() >= 1


def test_the_trainer_thread_alone_computes_with_the_threads(tmp_path: Path, monkeypatch) -> None:
    """The main thread builds the run on one thread and hands the count to the trainer
    thread (two OpenMP teams on busy cores slowed every training step); a second run in the
    same process gets the same count, not the one left to the main thread."""
    from gantui.engine import fast

    seen: list[int] = []
    step = Trainer.g_step

    def g_step(self: Trainer) -> None:
        seen.append(torch.get_num_threads())  # in the trainer thread
        step(self)

    monkeypatch.setattr(Trainer, "g_step", g_step)
    monkeypatch.setattr(fast, "available_cores", lambda: 2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for name in ("a", "b"):
            session = start(tiny("ring-8", "eval_every=0", "steps=4"), "ring-8",
                            runs_dir=tmp_path, name=name, device="cpu")
            assert torch.get_num_threads() == 1  # the main thread keeps one
            follow(session, 60)
            assert session.state == "finished"
            assert seen and set(seen) == {2}, seen
            seen.clear()
    finally:
        monkeypatch.setattr(fast, "_handed_over", [])
        torch.set_num_threads(before)


def test_threads_through_the_cli(tmp_path: Path) -> None:
    out = cli("train", "--no-ui", "--preset", "ring-8", "--device", "cpu", "--set",
              "threads=1", "--set", "steps=20", "--set", "log_every=10", "--set",
              "eval_every=0", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "CPU threads: 1 (the threads key)" in out.stdout
    bad = cli("train", "--no-ui", "--set", "threads=-1", cwd=tmp_path)
    assert bad.returncode == 1 and "threads must be >= 0" in bad.stderr


@pytest.mark.parametrize("preset, sets", [
    ("dcgan-mnist-plain", []), ("dcgan-mnist", []), ("cdcgan-mnist", []),
    ("dcgan-celeba", ["image_size=32", "ngf=8"]),
])
def test_g_first_layer_as_a_product_computes_what_the_convolution_does(
        preset: str, sets: list[str]) -> None:
    """G's first transposed convolution runs as a matrix product (a third of its CPU time):
    the same outputs and the same gradients for z and the weights as the layer itself."""
    from gantui.models.builtin import build_models
    torch.manual_seed(0)
    cfg = tiny(preset, *sets)
    G, _ = build_models(cfg)
    G.eval()
    z = torch.randn(6, G.net[0].in_channels - (G.label.n_classes if G.label else 0),
                    requires_grad=True)
    y = torch.randint(0, G.label.n_classes, (6,)) if G.label is not None else None
    fast = G(z, y)
    code = torch.cat([z, G.label(y)], 1) if G.label is not None else z
    conv = G.net(code[:, :, None, None])
    assert torch.allclose(fast, conv, atol=1e-5)
    weight = G.net[0].weight
    for a, b in zip(torch.autograd.grad(fast.square().sum(), (z, weight)),
                    torch.autograd.grad(conv.square().sum(), (z, weight)), strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    assert list(G.state_dict()) == list(G.net.state_dict(prefix="net."))  # checkpoints as before
