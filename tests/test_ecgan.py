"""The encoder-conditional GAN (cVAE-GAN): it trains, previews inputs beside reconstructions,
resumes exactly, and `gantui eval` scores its reconstructions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gantui import config
from gantui import events as ev
from gantui.config import ConfigError
from gantui.engine.control import Controller
from gantui.engine.trainer import Trainer
from gantui.headless import follow
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start

from .conftest import cli, tiny

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_preset_loads_and_refuses_an_unconditional_encoder() -> None:
    _, cfg = config.load("ecgan-mnist")
    assert cfg.encoder and cfg.conditional and cfg.recon_weight == 10.0
    with pytest.raises(ConfigError, match="encoder needs a conditional DCGAN"):
        config.load("dcgan-mnist-plain", ["encoder=true"])
    with pytest.raises(ConfigError, match="kl_weight"):
        config.load("ecgan-mnist", ["kl_weight=-1"])


def test_a_run_trains_e_and_g_and_previews_reconstructions(runs_dir: Path,
                                                           trained_judge: dict) -> None:
    # the session's judge (trained once, in the session cache) scores the run
    cfg = tiny("ecgan-mnist", "eval_every=6", "n_samples=40", "eval_samples=200")
    session = start(cfg, "ecgan-mnist", runs_dir=runs_dir, device="cpu")
    events = follow(session, 300)
    assert session.state == "finished", session.error
    trainer = session.trainer
    (quality,) = [e for e in events if isinstance(e, ev.Quality)]
    assert {"cond_acc", "recon_l1", "recon_acc", "judge_fd"} <= set(quality.values)
    assert 0 < quality.values["recon_l1"] < 2 and quality.primary == "cond_acc"
    state = load_checkpoint_file(session.run_dir / "checkpoints" / "ckpt-00000006.pt")
    assert set(state["E"]) == set(trainer.E.state_dict()) and state["opt_e"]["state"]
    assert torch.equal(state["fixed_real"], trainer.previews.fixed_real.cpu())
    # the preview: a row per class, column 0 the real digit of that class, column 1 its
    # reconstruction, then free samples
    grid = np.asarray(Image.open(sorted((session.run_dir / "samples").glob("*.png"))[-1]))
    side = 28 + 2  # make_grid's padding
    cell = grid[2:2 + 28, 2:2 + 28].astype(float) / 127.5 - 1
    first_real = trainer.previews.fixed_real[0, 0].numpy()
    assert np.abs(cell - first_real).max() < 0.02
    assert grid.shape[0] == 10 * side + 2 and grid.shape[1] == trainer.previews.nrow * side + 2

    out = cli("eval", str(session.run_dir), "--json", "-n", "200", cwd=runs_dir)
    assert out.returncode == 0, out.stderr
    values = json.loads(out.stdout)["values"]
    assert {"recon_l1", "recon_acc", "cond_acc"} <= set(values)


def _trainer(cfg, store, state=None) -> Trainer:
    return Trainer(cfg, store=store, emit=lambda e: None, controller=Controller(),
                   device=torch.device("cpu"), preset="ecgan-mnist", name=store.path.name,
                   resume_state=state)


def test_n_plus_resume_plus_n_equals_2n(tmp_path: Path) -> None:
    cfg = tiny("ecgan-mnist", "eval_every=0", "steps=8", "checkpoint_every=4")
    straight = _trainer(cfg, RunStore.create(tmp_path, "a", cfg.to_dict()))
    straight.run()
    half = _trainer(cfg.replace(steps=4), RunStore.create(tmp_path, "b", cfg.to_dict()))
    half.run()
    store = RunStore.open(tmp_path / "b")
    _, state = store.load_checkpoint()
    resumed = _trainer(cfg, RunStore.open(tmp_path / "b"), state)
    resumed.run()
    for ours, theirs in ((straight.G, resumed.G), (straight.E, resumed.E),
                         (straight.D, resumed.D)):
        for a, b in zip(ours.state_dict().values(), theirs.state_dict().values(), strict=True):
            assert torch.equal(a, b)
