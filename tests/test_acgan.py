"""AC-GAN's auxiliary classifier (``ac_weight``): Q learning the classes of real digits in
real training steps, G's share read right, the live weight, exact resume with it, and the
settings it refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gantui import config
from gantui import events as ev
from gantui.data.sources import mnist_split
from gantui.headless import LinePrinter, follow
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import prepare_resume, start

from .conftest import cli, straight_and_resumed, tiny


@pytest.mark.parametrize("preset, sets, message", [
    ("cgan-mnist", ["ac_weight=-1"], "ac_weight must be between 0 and 10000"),
    ("dcgan-mnist-plain", ["ac_weight=0.2"], "ac_weight needs a conditional model"),
])
def test_bad_ac_settings_are_refused(preset: str, sets: list[str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.load(preset, sets)


def test_ac_weight_refuses_an_encoder_in_one_line() -> None:
    result = cli("train", "--preset", "ecgan-mnist", "--no-ui", "--set", "ac_weight=0.2")
    assert result.returncode != 0
    assert "ac_weight needs a built-in model without an encoder" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_the_classifier_learns_real_classes_and_g_is_read_by_it(runs_dir: Path) -> None:
    cfg = tiny("cgan-mnist", "ac_weight=1", "steps=160", "batch_size=32", "log_every=40",
               "checkpoint_every=1000", "sample_every=1000", "eval_every=0")
    session = start(cfg, "cgan-mnist", runs_dir=runs_dir, device="cpu")
    events = follow(session, 120)
    assert session.state == "finished" and not session.error
    # Q learns from real labelled batches: held-out digits, which no network saw, read far
    # above chance (a Q taught by G's early noise would read them near 10%)
    split = mnist_split(cfg)
    q = session.trainer.Q
    assert q is not None
    q.eval()
    with torch.no_grad():
        held = split.held_images.float().div(127.5).sub(1.0)
        read = (q(held).argmax(1) == split.held_labels).float().mean().item()
    assert read > 0.6, read
    reads = [e.info_acc for e in events if isinstance(e, ev.Metrics)]
    assert all(0.0 <= r <= 1.0 for r in reads) and reads[-1] > 0.2, reads
    records = RunStore.open(session.run_dir).metrics()
    assert [r["info_acc"] for r in records] == pytest.approx(reads)
    assert "Q reads" in LinePrinter().line([e for e in events if isinstance(e, ev.Metrics)][-1])
    state = load_checkpoint_file(RunStore.open(session.run_dir).checkpoint_paths()[-1])
    assert state["Q"]["head.weight"].shape == (10, cfg.d_hidden[-1])
    assert state["opt_q"]["state"]  # Q's own Adam moments, saved to resume it
    # the weight is live within (0, 10000]; 0 would drop the classifier a resume needs
    assert session.trainer.set_live({"ac_weight": 0.5})[0]["new"] == 0.5
    for bad, message in ((0.0, "stays above 0"), (-1.0, "between 0 and 10000")):
        with pytest.raises(config.ConfigError, match=message):
            session.trainer.set_live({"ac_weight": bad})
    # nor can a resume switch it off, or on
    with pytest.raises(config.ConfigError, match="cannot be switched on or off"):
        prepare_resume(RunStore.open(session.run_dir), ["ac_weight=0"])
    # a conditional run without it has no classifier to weigh
    plain = start(tiny("cgan-mnist", "steps=4"), "cgan-mnist", runs_dir=runs_dir,
                  device="cpu")
    follow(plain, 60)
    assert plain.trainer.Q is None
    assert all("info_acc" not in r for r in RunStore.open(plain.run_dir).metrics())
    with pytest.raises(config.ConfigError, match="started without one"):
        plain.trainer.set_live({"ac_weight": 0.5})
    with pytest.raises(config.ConfigError, match="cannot be switched on or off"):
        prepare_resume(RunStore.open(plain.run_dir), ["ac_weight=0.5"])


def test_resume_with_the_classifier_is_exact(runs_dir: Path) -> None:
    a, b = straight_and_resumed(runs_dir, "cdcgan-mnist", ["ac_weight=0.5", "r1_every=2",
                                                           "lr_decay=none"], 9)
    for part in ("G", "D", "Q", "G_ema"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    for index, moments in a["opt_q"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[name], b["opt_q"]["state"][index][name]), (index, name)


def test_q_learns_in_the_d_step_only_and_its_term_reaches_g_alone(tmp_path: Path) -> None:
    """The shipped preset against itself without the classifier, same seed: D's update is
    bit-identical (Q reads a detached batch), Q learns in the D step and not from G's
    samples, and G's update differs (the term reaches it)."""
    from gantui.engine.control import Controller
    from gantui.engine.trainer import Trainer

    def trainer(*extra: str) -> Trainer:
        cfg = tiny("cdcgan-mnist", "eval_every=0", "r1_every=1", *extra)
        store = RunStore.create(tmp_path, f"t{len(extra)}", cfg.to_dict())
        return Trainer(cfg, store=store, emit=lambda e: None, controller=Controller(),
                       device=torch.device("cpu"), preset="cdcgan-mnist", name="t")

    def weights(model: torch.nn.Module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in model.parameters()]

    with_q, without = trainer(), trainer("ac_weight=0")
    assert with_q.cfg.ac_weight == 0.2 and with_q.Q is not None and without.Q is None
    initial = weights(with_q.Q)
    for t in (with_q, without):
        t.d_step()  # with R1: the real batch requires grad
    for a, b in zip(with_q.D.state_dict().values(), without.D.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    learned = weights(with_q.Q)
    assert any(not torch.equal(a, b) for a, b in zip(initial, learned, strict=True))
    for t in (with_q, without):
        t.g_step()
    assert all(torch.equal(a, b) for a, b in zip(learned, weights(with_q.Q), strict=True))
    assert all(p.requires_grad for p in with_q.Q.parameters())  # unfrozen after G's step
    assert any(not torch.equal(a, b) for a, b in zip(weights(with_q.G), weights(without.G),
                                                      strict=True))


def test_the_dashboard_offers_the_weight_only_to_runs_with_the_classifier() -> None:
    from gantui.ui.model import RunModel

    for preset, sets, offered in (("cdcgan-mnist", [], True), ("cgan-mnist", [], False),
                                  ("grid-25", [], False)):
        model = RunModel()
        model.config = config.load(preset, sets)[1].to_dict()
        keys = model.hyperparameters()
        assert ("ac_weight" in keys) == offered, preset
        assert ("info_weight" in keys) == (preset == "grid-25"), preset  # InfoGAN's code
        assert "lr_g" in keys
