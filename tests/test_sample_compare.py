"""``gantui sample`` (grids, interpolation, a row per class) and ``gantui compare``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gantui.errors import GantuiError
from gantui.headless import follow
from gantui.session import start
from gantui.studies import sampling
from gantui.studies.compare import chart, load_runs, summary

from .conftest import cli, tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, preset, extra in (("cond", "cdcgan-mnist", ()), ("ring", "ring-8", ()),
                                ("ring-fast", "ring-8", ("lr_d=5e-3",))):
        session = start(tiny(preset, *extra), preset, runs_dir=root, name=name, device="cpu")
        follow(session, 120)
        out[name] = session.run_dir
    return out


def test_interpolation_walks_between_two_latents() -> None:
    cfg = tiny("cdcgan-mnist")
    z, labels = sampling.interpolation(cfg, rows=3, steps=5, seed=1)
    ends = sampling.latents(cfg, 6, 1).view(3, 2, cfg.nz)
    row = z.view(3, 5, cfg.nz)
    assert torch.allclose(row[:, 0], ends[:, 1]) and torch.allclose(row[:, -1], ends[:, 0])
    assert torch.allclose(row[:, 2], 0.5 * ends[:, 0] + 0.5 * ends[:, 1])
    assert labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5
    with pytest.raises(GantuiError, match="at least 2 steps"):
        sampling.interpolation(cfg, 1, 1, 0)


def test_sample_writes_a_grid_with_a_row_per_class(runs, tmp_path: Path) -> None:
    out = cli("sample", str(runs["cond"]), "-n", "20", "--out", str(tmp_path / "g.png"),
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    image = np.asarray(Image.open(tmp_path / "g.png"))
    assert image.ndim == 2  # grey MNIST stays grey
    assert image.shape == (10 * 30 + 2, 2 * 30 + 2)  # 10 classes x 2 columns of 28px + pad


def test_sample_interpolation_and_ring_scatter(runs, tmp_path: Path) -> None:
    out = cli("sample", str(runs["cond"]), "--interpolate", "6", "--rows", "4", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    path = Path(out.stdout.split()[1])
    assert path.parent == runs["cond"] / "samples" and "interp6" in path.name
    assert np.asarray(Image.open(path)).shape == (4 * 30 + 2, 6 * 30 + 2)
    out = cli("sample", str(runs["ring"]), cwd=tmp_path)
    assert out.returncode == 0 and np.asarray(Image.open(out.stdout.split()[1])).shape == (
        256, 256, 3)


def test_sample_bad_input(runs, tmp_path: Path) -> None:
    for args, fragment in ((["/no/run"], "no run directory"),
                           ([str(runs["ring"]), "-n", "0"], "-n must be between"),
                           ([str(runs["ring"]), "--checkpoint", str(tmp_path / "x.pt")],
                            "unreadable")):
        out = cli("sample", *args, cwd=tmp_path)
        assert out.returncode == 1 and fragment in out.stderr and "Traceback" not in out.stderr


def test_compare_draws_each_run_and_summarises(runs, tmp_path: Path) -> None:
    loaded = load_runs([runs["ring"], runs["ring-fast"]])
    text = chart(loaded, "loss_d", 80, 12).plain
    assert "waiting" not in text and len(text.splitlines()) == 12
    table = summary(loaded)
    assert [c.header for c in table.columns][:3] == ["run", "preset", "step"]
    out = cli("compare", str(runs["ring"]), str(runs["ring-fast"]), "--metric", "d_real",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "ring-fast" in out.stdout and "d_real (EMA 0.9)" in out.stdout
    bad = cli("compare", str(runs["ring"]), "--metric", "nope", cwd=tmp_path)
    assert bad.returncode == 1 and "unknown metric 'nope'" in bad.stderr
    bad = cli("compare", str(tmp_path), cwd=tmp_path)
    assert bad.returncode == 1 and "is not a gantui run" in bad.stderr
