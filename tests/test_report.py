"""``gantui report`` as library code: run and sweep reports from real tiny runs, the figures
(with the live changes marked), ``compare --png``, slerp and one-class sampling, and bad or
hostile input."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image

from gantui.errors import GantuiError
from gantui.files import read_jsonl
from gantui.headless import follow
from gantui.session import start
from gantui.studies import figures, sampling
from gantui.studies.compare import load_runs
from gantui.studies.report import report, report_run, report_sweep

from .conftest import tiny

pytestmark = pytest.mark.usefixtures("one_thread")

RUN_PNGS = {"losses.png", "d_outputs.png", "grad_norms.png", "samples.png", "final.png",
            "interp-linear.png", "interp-slerp.png"}


def _run(runs_dir: Path, name: str, preset: str, *extra: str, change: dict | None = None
         ) -> Path:
    session = start(tiny(preset, *extra), preset, runs_dir=runs_dir, name=name, device="cpu")
    if change:
        session.controller.set(change).result(timeout=60)
    follow(session, 120)
    assert session.state == "finished", session.error
    return session.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory, one_thread) -> dict[str, Path]:
    """A ring-8 run with evaluations, a conditional MNIST run with a live lr change (no
    evaluations: the digit judge would take half a minute to build), and a sweep directory of
    two ring runs, one that never ran and one that has no metrics."""
    root = tmp_path_factory.mktemp("report")
    out = {"ring": _run(root, "ring", "ring-8", "eval_every=20"),
           "cond": _run(root, "cond", "cdcgan-mnist", "eval_every=0", change={"lr_g": 1e-4})}
    sweep = root / "sweep"
    names = []
    for lr in (1e-3, 5e-3):
        names.append(f"lr_d={lr:g}-seed=0")
        _run(sweep, names[-1], "ring-8", f"lr_d={lr}", "eval_every=30", "steps=30")
    names += ["lr_d=0.01-seed=0", "lr_d=0.02-seed=0"]  # never started; started, no metrics
    (sweep / names[-1]).mkdir()
    shutil.copy(out["ring"] / "config.toml", sweep / names[-1] / "config.toml")
    runs_list = [{"name": n, "params": {"lr_d": float(n[5:].split("-")[0]), "seed": 0}}
                 for n in names]
    (sweep / "sweep.json").write_text(json.dumps({
        "version": 1, "name": "lr", "preset": "ring-8", "vary": {"lr_d": [1e-3, 5e-3, 1e-2, 2e-2]},
        "seeds": [0], "sets": ["steps=30"], "runs": runs_list}))
    out["sweep"] = sweep
    return out


def _pngs(folder: Path) -> set[str]:
    names = {p.name for p in folder.glob("*.png")}
    for name in names:
        with Image.open(folder / name) as image:
            image.load()  # decodes
    return names


def _check_html(path: Path, n_images: int) -> str:
    text = path.read_text(encoding="utf-8")
    assert text.count('src="data:image/png;base64,') == n_images
    assert "<script" not in text.lower() and "http://" not in text and "https://" not in text
    return text


def test_a_ring_run_report(runs, tmp_path: Path) -> None:
    path = report_run(runs["ring"])
    out = runs["ring"] / "report"
    assert path == out / "report.html" and (out / "report.md").is_file()
    names = _pngs(out)
    assert names == RUN_PNGS | {"quality.png", "best.png"}  # no class grid: unconditional
    _check_html(path, len(names))
    md = (out / "report.md").read_text()
    assert "# gantui report · ring" in md and "**preset** ring-8" in md
    assert "**state** finished" in md and "**steps** 60 of 60" in md
    for name in names:
        assert f"]({name})" in md
    assert "| modes \\* |" in md  # the quality summary marks the primary
    assert "checkpoints/best.pt, step" in md and "Class grid" not in md
    with Image.open(out / "final.png") as final:
        assert final.size == (256, 256)  # the scatter of the ring
    # --out elsewhere, through the dispatcher
    assert report(runs["ring"], tmp_path / "elsewhere") == tmp_path / "elsewhere" / "report.html"


def test_a_conditional_run_report_shows_the_change_and_a_class_grid(runs) -> None:
    path = report_run(runs["cond"])
    out = path.parent
    names = _pngs(out)
    assert names == RUN_PNGS | {"classes.png"}  # no evaluations: no quality, no best
    html = _check_html(path, len(names))
    md = (out / "report.md").read_text()
    assert "| set | lr\\_g 0.0005→0.0001 |" in md  # the journal table
    assert "<td>set</td><td>lr_g 0.0005→0.0001</td>" in html
    assert "No best checkpoint" in md and "No quality evaluations" in md
    with Image.open(out / "classes.png") as grid:
        assert grid.size == (8 * 30 + 2, 10 * 30 + 2)  # a column per z, a row per class


def test_figures_mark_every_live_change(runs) -> None:
    (run,) = load_runs([runs["cond"]])
    changes = figures.live_changes(read_jsonl(runs["cond"] / "events.jsonl"))
    assert [c.label for c in changes] == ["lr_g 0.0005→0.0001"]
    drawn = figures.run_figures(run, changes)
    assert set(drawn) == {"losses", "d_outputs", "grad_norms"}  # no quality.jsonl
    assert all(d.markers == ("lr_g 0.0005→0.0001",) for d in drawn.values())
    extra = [*changes, figures.Change(4, "lr_d", 2e-4, 1e-4), figures.Change(4, "d_steps", 1, 2)]
    losses = figures.curves_figure(run, "losses", extra)
    assert losses.markers == ("lr_g 0.0005→0.0001", "lr_d 0.0002→0.0001", "d_steps 1→2")
    Image.open(io.BytesIO(losses.png)).load()
    (ring,) = load_runs([runs["ring"]])
    quality = figures.quality_figure(ring, extra)
    assert quality is not None and len(quality.markers) == 3
    strip = figures.sample_strip(runs["ring"], frames=2)
    assert strip.panels == ("step 20", "step 60")  # evenly spaced: the first and the last


def test_compare_png(runs, tmp_path: Path) -> None:
    dirs = [runs["ring"], *(runs["sweep"] / n for n in ("lr_d=0.001-seed=0",
                                                       "lr_d=0.005-seed=0"))]
    for metric in ("loss_d", "grad_g", "modes"):
        path = figures.compare_png(dirs, metric, tmp_path / f"{metric}.png", 0.9)
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 400
    for args, fragment in (((dirs, "nope"), "unknown metric 'nope'"),
                           (([tmp_path], "loss_d"), "is not a gantui run"),
                           ((dirs, "judge_fd"), "no run has judge_fd values yet"),
                           ((dirs, "loss_d", tmp_path / "no" / "x.png"), "cannot write")):
        path = args[2] if len(args) > 2 else tmp_path / "x.png"
        with pytest.raises(GantuiError, match=fragment):
            figures.compare_png(args[0], args[1], path)


def test_a_sweep_report(runs, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    shutil.copytree(runs["sweep"], sweep)
    (sweep / "summary.csv").write_text("run,state\n<script>alert(1)</script>,finished\n")
    path = report(sweep)
    assert path == sweep / "report" / "report.html"
    names = _pngs(path.parent)
    assert names == {"sweep-loss_g.png", "sweep-loss_d.png", "sweep-modes.png",
                     "sweep-final.png"}
    html = _check_html(path, len(names))
    md = (path.parent / "report.md").read_text()
    # the report builds the sweep's table itself (gantui.studies.summary) and shows it once;
    # a stale or hostile summary.csv is not shown beside it (escaping: tests/test_summary.py)
    assert "alert(1)" not in html and "alert(1)" not in md and html.count("<table>") == 1
    rows = {line.split(" | ")[0][2:]: line for line in md.splitlines()
            if line.startswith("| lr")}
    assert len(rows) == 4
    assert "| missing |" in rows["lr\\_d=0.01-seed=0"]
    assert "| missing (no metrics) |" in rows["lr\\_d=0.02-seed=0"]
    for name in ("lr\\_d=0.001-seed=0", "lr\\_d=0.005-seed=0"):
        assert "| finished | 30 | modes |" in rows[name]
    assert "**runs** 2 with metrics of 4" in md
    panels = figures.panels_figure([("lr_d=0.001, seed=0", torch.rand(8, 8).numpy())])
    assert panels.panels == ("lr_d=0.001, seed=0",)


def test_slerp_and_one_class_sampling() -> None:
    cfg = tiny("cdcgan-mnist")
    lin, lin_labels = sampling.interpolation(cfg, 3, 5, seed=1)
    sph, sph_labels = sampling.interpolation(cfg, 3, 5, seed=1, spherical=True)
    lin, sph = lin.view(3, 5, cfg.nz), sph.view(3, 5, cfg.nz)
    assert torch.equal(lin_labels, sph_labels)
    assert torch.allclose(sph[:, 0], lin[:, 0], atol=1e-5)
    assert torch.allclose(sph[:, -1], lin[:, -1], atol=1e-5)
    assert not torch.allclose(sph[:, 2], lin[:, 2])
    norms = (sph[:, 0].norm(dim=1) + sph[:, -1].norm(dim=1)) / 2
    assert torch.allclose(sph[:, 2].norm(dim=1), norms, atol=1e-4)  # off the chord
    a = torch.tensor([1.0, 0.0])
    assert torch.allclose(sampling.slerp(a, torch.tensor([0.0, 2.0]), torch.tensor(0.5)),
                          1.5 * torch.tensor([0.5**0.5, 0.5**0.5]))
    assert torch.allclose(sampling.slerp(a, 3 * a, torch.tensor(0.5)), 2 * a)  # parallel
    labels, nrow = sampling.one_class(cfg, 7, 16)
    assert labels.tolist() == [7] * 16 and nrow == 4
    z, labels = sampling.class_by_z(cfg, 4, seed=0)
    assert torch.equal(z.view(10, 4, cfg.nz)[3], z.view(10, 4, cfg.nz)[0])
    assert labels.view(10, 4)[:, 0].tolist() == list(range(10))
    for k, fragment in ((10, "--class 10: this run has 10 classes, 0 to 9"),
                        (-1, "--class -1: this run has 10 classes")):
        with pytest.raises(GantuiError, match=fragment):
            sampling.one_class(cfg, k, 16)
    with pytest.raises(GantuiError, match="needs a conditional run"):
        sampling.one_class(tiny(), 0, 16)


def test_bad_input_is_one_line(runs, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    fresh = tmp_path / "fresh"  # a run that has not logged yet
    fresh.mkdir()
    shutil.copy(runs["ring"] / "config.toml", fresh)
    bad_toml = tmp_path / "bad-toml"
    shutil.copytree(runs["ring"], bad_toml)
    (bad_toml / "config.toml").write_text("dataset = [unclosed\n")
    fifo = tmp_path / "fifo"
    shutil.copytree(runs["ring"], fifo)
    (fifo / "metrics.jsonl").unlink()
    os.mkfifo(fifo / "metrics.jsonl")  # would block a naive reader for ever
    garbage, empty, future = (tmp_path / n for n in ("garbage", "empty", "future"))
    for folder, text in ((garbage, "\x00not json"), (empty, '{"version": 1, "runs": []}'),
                         (future, '{"version": 9, "runs": [{"name": "a"}]}')):
        folder.mkdir()
        (folder / "sweep.json").write_text(text)
    cases = [(tmp_path / "absent", "no run or sweep directory at"),
             (plain, "is not a gantui run or sweep directory"),
             (fresh, "no metrics yet: nothing to report"),
             (bad_toml, "config.toml: not valid TOML"),
             (fifo, "cannot read .*metrics.jsonl: not a regular file"),
             (garbage, "sweep.json: not a JSON object"),
             (empty, "sweep.json lists no runs: nothing to report"),
             (future, "has version 9; this gantui reads version 1")]
    for path, fragment in cases:
        with pytest.raises(GantuiError, match=fragment) as info:
            report(path, tmp_path / "out")
        assert "\n" not in str(info.value)
    with pytest.raises(GantuiError, match="is not a gantui run or sweep"):
        report_sweep(plain)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the output folder should go")
    with pytest.raises(GantuiError, match="cannot create"):
        report_run(runs["ring"], blocked / "report")


def test_hostile_files_are_escaped_not_fatal(runs, tmp_path: Path) -> None:
    run = tmp_path / "hostile"
    shutil.copytree(runs["ring"], run)
    shutil.rmtree(run / "report", ignore_errors=True)
    evil = "<script>alert(1)</script>"
    lines = [{"event": "set", "step": 10, "key": f"{evil} $\\frac{{$", "old": "a|b",
              "new": "**x**"},
             {"event": "alert", "step": 11, "kind": "d_wins", "message": "<img src=x onerror=1>"},
             {"event": "set", "step": 12, "key": "deep", "old": json.loads("[" * 500 + "]" * 500),
              "new": {"a": 1}},
             {"event": "state", "step": "x", "state": ["not", "a", "state"]}]
    with open(run / "events.jsonl", "a") as fh:
        fh.write("\n".join(json.dumps(r) for r in lines) + '\n{"torn": \n\xff\xfe\n')
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 70, "loss_d": Infinity, "loss_g": NaN}\n[1, 2]\n')
    with open(run / "config.toml", "a") as fh:
        fh.write('evil = "\\u001b[31m<b>red</b>"\n' + "deep." * 50 + "x = 1\n")
    (run / "samples" / "step-00000099.png").write_bytes(b"not a png")
    path = report_run(run)
    html = path.read_text()
    assert "<script" not in html and "<img src=x" not in html and "<b>red" not in html
    assert "&lt;script&gt;" in html and "\\x1b[31m&lt;b&gt;red" in html
    md = (path.parent / "report.md").read_text()
    assert "a\\|b→\\*\\*x\\*\\*" in md and "&lt;img src=x onerror=1&gt;" in md
    assert "| set | deep \\[…\\]→{…} |" in md
    (ring,) = load_runs([run])
    changes = figures.live_changes(read_jsonl(run / "events.jsonl"))
    assert len(figures.curves_figure(ring, "losses", changes).markers) == 2
    assert figures.sample_strip(run).panels[-1] == "step 60"  # the broken grid is skipped
