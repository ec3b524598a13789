"""The study commands through the real CLI (Typer's CliRunner, in this process): report,
export, compare --png, sample --slerp and --class, with their one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from gantui.headless import follow
from gantui.session import start

from .conftest import cli, tiny


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished tiny cdcgan-mnist run with a live change, and a ring-8 run."""
    root = tmp_path_factory.mktemp("studies")
    out = []
    for preset, extra in (("cdcgan-mnist", ("eval_every=0", "steps=8")),
                          ("ring-8", ("eval_every=20",))):
        session = start(tiny(preset, *extra), preset, runs_dir=root, device="cpu")
        session.controller.set({"lr_g": 1e-4})
        follow(session, 120)
        assert session.state == "finished", session.error
        out.append(session.run_dir)
    return out[0], out[1]


def test_report_of_a_run_through_the_cli(runs, tmp_path: Path) -> None:
    cond, _ = runs
    out = cli("report", str(cond), "--out", str(tmp_path / "r"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    html = (tmp_path / "r" / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html and "lr_g" in html
    assert (tmp_path / "r" / "report.md").is_file()
    for png in (tmp_path / "r").glob("*.png"):
        Image.open(png).verify()


def test_export_compare_png_and_sample_options(runs, tmp_path: Path) -> None:
    cond, ring = runs
    out = cli("export", str(ring), "--tensorboard", str(tmp_path / "tb"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "tensorboard --logdir" in out.stdout
    assert list((tmp_path / "tb" / ring.name).glob("events.out.tfevents.*"))

    png = tmp_path / "loss.png"
    out = cli("compare", str(cond), str(ring), "--metric", "loss_g", "--png", str(png),
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert Image.open(png).size[0] > 300

    for args, kind in ((["--interpolate", "4", "--rows", "2", "--slerp"], "slerp4"),
                       (["--class", "3", "-n", "8"], "class3")):
        out = cli("sample", str(cond), *args, "--out", str(tmp_path / f"{kind}.png"),
                  cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert kind in out.stdout and (tmp_path / f"{kind}.png").is_file()


@pytest.mark.parametrize(("args", "message"), [
    (["sample", "{cond}", "--class", "10"], "--class 10"),
    (["sample", "{ring}", "--class", "1"], "conditional"),
    (["sample", "{cond}", "--slerp"], "--interpolate"),
    (["sample", "{cond}", "--class", "1", "--interpolate", "3"], "does not mix"),
    (["report", "{empty}"], "not a gantui run"),
    (["export", "{empty}", "--tensorboard", "{empty}/tb"], "not a gantui run"),
    (["compare", "{cond}", "{ring}", "--metric", "nope", "--png", "{empty}/x.png"], "nope"),
])
def test_bad_input_gets_one_line(runs, tmp_path: Path, args: list[str], message: str) -> None:
    cond, ring = runs
    empty = tmp_path / "empty"
    empty.mkdir()
    filled = [a.format(cond=cond, ring=ring, empty=empty) for a in args]
    out = cli(*filled, cwd=tmp_path)
    assert out.returncode != 0 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
