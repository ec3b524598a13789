"""InfoGAN's categorical code (``info_codes``): the latent layout, Q learning to read G's
code in real training steps, exact resume with Q, previews and ``gantui sample --code``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gantui import config
from gantui import events as ev
from gantui.files import read_toml_dict
from gantui.headless import LinePrinter, follow
from gantui.models.latent import code, latent, width, with_code
from gantui.run.follow import grid_nrow
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start
from gantui.studies.sampling import interpolation

from .conftest import cli, tiny


def test_the_code_is_one_hot_after_z_and_leaves_z_alone() -> None:
    plain, coded = tiny("ring-8"), tiny("ring-8", "info_codes=5")
    assert width(plain) == plain.nz and width(coded) == coded.nz + 5
    z = latent(coded, 400, torch.Generator().manual_seed(3))
    assert z.shape == (400, coded.nz + 5)
    onehot = z[:, coded.nz:]
    assert torch.equal(onehot.sum(1), torch.ones(400)) and set(onehot.unique().tolist()) == {0, 1}
    assert sorted(code(coded, z).unique().tolist()) == [0, 1, 2, 3, 4]  # all values drawn
    # the Gaussian part is drawn first, from the same stream as a run without the code
    z0 = latent(plain, 400, torch.Generator().manual_seed(3))
    assert torch.equal(z[:, :coded.nz], z0)
    fixed = with_code(coded, z, torch.full((400,), 2))
    assert torch.equal(code(coded, fixed), torch.full((400,), 2))
    assert torch.equal(fixed[:, :coded.nz], z0)


@pytest.mark.parametrize("sets, message", [
    (["info_codes=-1"], "info_codes must be >= 0"),
    (["info_codes=4", "info_weight=-1"], "info_weight must be between 0 and 10000"),
    (["info_codes=1"], "info_codes must be 0 .off. or at least 2"),
])
def test_bad_info_settings_are_refused(sets: list[str], message: str) -> None:
    with pytest.raises(config.ConfigError, match=message):
        config.load("ring-8", sets)


def test_info_codes_refuse_a_label() -> None:
    with pytest.raises(config.ConfigError, match="info_codes needs an unconditional model"):
        config.load("cdcgan-mnist", ["info_codes=10"])


def test_info_codes_refuse_an_encoder_in_one_line() -> None:
    result = cli("train", "--preset", "ecgan-mnist", "--no-ui", "--set", "info_codes=10")
    assert result.returncode != 0
    assert "info_codes needs a built-in model without an encoder" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def test_q_learns_to_read_the_code_and_the_run_records_it(runs_dir: Path) -> None:
    cfg = tiny("ring-8", "info_codes=4", "steps=240", "log_every=40", "checkpoint_every=1000")
    session = start(cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    events = follow(session, 120)
    assert session.state == "finished" and not session.error
    reads = [e.info_acc for e in events if isinstance(e, ev.Metrics)]
    # Q starts at chance (1/4) and G makes its code legible within a few hundred steps
    assert reads[0] < 0.9 and reads[-1] > 0.9, reads
    records = RunStore.open(session.run_dir).metrics()
    assert [r["info_acc"] for r in records] == pytest.approx(reads)
    line = LinePrinter().line([e for e in events if isinstance(e, ev.Metrics)][-1])
    assert "Q reads" in line
    state = load_checkpoint_file(RunStore.open(session.run_dir).checkpoint_paths()[-1])
    assert state["Q"] is not None and state["opt_q"] is not None
    assert state["Q"]["head.weight"].shape == (4, cfg.d_hidden[-1])
    with pytest.raises(config.ConfigError):  # a weight, live, within its bounds
        session.trainer.set_live({"info_weight": -1.0})
    assert session.trainer.set_live({"info_weight": 0.5})[0]["new"] == 0.5
    # a run without the code records none, and has no weight to set
    plain = start(tiny("ring-8", "steps=40", "log_every=20"), "ring-8", runs_dir=runs_dir,
                  device="cpu")
    follow(plain, 60)
    assert all("info_acc" not in r for r in RunStore.open(plain.run_dir).metrics())
    with pytest.raises(config.ConfigError, match="this run has none"):
        plain.trainer.set_live({"info_weight": 0.5})


def test_resume_with_q_is_exact(runs_dir: Path) -> None:
    base = ["info_codes=4", "checkpoint_every=1000", "sample_every=1000", "log_every=15",
            "lr_decay=none", "info_weight=0.5"]
    straight = start(tiny("ring-8", *base, "steps=60"), "ring-8", runs_dir=runs_dir,
                     name="straight", device="cpu")
    follow(straight, 120)
    half = start(tiny("ring-8", *base, "steps=30"), "ring-8", runs_dir=runs_dir, name="half",
                 device="cpu")
    follow(half, 120)
    resumed = start(None, "", resume=half.run_dir, sets=["steps=60"], device="cpu")
    follow(resumed, 120)
    assert resumed.state == "finished" and not resumed.error
    a, b = (load_checkpoint_file(RunStore.open(s.run_dir).checkpoint_paths()[-1])
            for s in (straight, half))
    for part in ("G", "D", "Q"):
        for key, value in a[part].items():
            assert torch.equal(value, b[part][key]), f"{part}.{key}"
    assert a["opt_q"]["state"].keys() == b["opt_q"]["state"].keys()
    for index, moments in a["opt_q"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(moments[name], b["opt_q"]["state"][index][name]), (index, name)


def test_previews_and_samples_give_each_code_value_a_row(runs_dir: Path) -> None:
    cfg = tiny("dcgan-mnist-plain", "info_codes=10", "n_samples=30")
    session = start(cfg, "dcgan-mnist-plain", runs_dir=runs_dir, device="cpu")
    previews = [e for e in follow(session, 120) if isinstance(e, ev.Preview)]
    assert session.state == "finished" and not session.error
    fixed = session.trainer.previews.fixed_noise
    assert code(cfg, fixed).tolist() == [k for k in range(10) for _ in range(3)]
    assert previews[-1].nrow == 3 and previews[-1].height > previews[-1].width
    # watch and compare cut the stored grid as the trainer laid it out
    assert grid_nrow(read_toml_dict(session.run_dir / "config.toml")) == 3
    run = str(session.run_dir)
    result = cli("sample", run, "--code", "7", "-n", "9")
    assert result.returncode == 0, result.stderr
    assert "code7" in result.stdout + result.stderr
    for args, message in ((["--code", "10"], "--code 10: this run's code has 10 values, 0 to 9"),
                          (["--code", "1", "--class", "1"], "does not mix")):
        bad = cli("sample", run, *args)
        assert bad.returncode != 0 and message in bad.stderr + bad.stdout
        assert "Traceback" not in bad.stderr


def test_interpolation_walks_z_and_keeps_each_rows_code() -> None:
    cfg = tiny("dcgan-mnist-plain", "info_codes=10")
    z, labels = interpolation(cfg, rows=4, steps=5, seed=1)
    assert labels is None and z.shape == (20, cfg.nz + 10)
    codes = code(cfg, z).view(4, 5)
    assert torch.equal(codes, codes[:, :1].expand(4, 5))  # one code value along a row
    assert torch.equal(z[:, cfg.nz:].sum(1), torch.ones(20))  # never a blend of two values
    plain_z, _ = interpolation(tiny("dcgan-mnist-plain"), rows=4, steps=5, seed=1)
    assert torch.equal(z[:, :cfg.nz], plain_z)  # the walk through z is a plain run's


def test_code_on_a_run_without_one_is_refused(tiny_cfg, runs_dir: Path) -> None:
    session = start(tiny_cfg, "ring-8", runs_dir=runs_dir, device="cpu")
    follow(session, 60)
    result = cli("sample", str(session.run_dir), "--code", "0")
    assert result.returncode != 0
    said = result.stdout + result.stderr
    assert "--code needs an InfoGAN or clustered run" in said
