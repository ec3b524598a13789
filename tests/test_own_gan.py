"""Your own networks: a model file or module through the real CLI and session, the dry-batch
checks, the user's own traceback, exact resume and the model source's hash."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gantui import config
from gantui.cli import app
from gantui.models.builtin import build_models
from gantui.models.user import UserModelError
from gantui.run.store import RunStore, load_checkpoint_file
from gantui.session import start

from .conftest import cli
from .owndata import write_cifar10, write_npz

MODEL = '''
import math

import torch
from torch import nn


class G(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.shape = cfg.image_shape
        width = cfg.model_args.get("width", 32)
        self.net = nn.Sequential(nn.Linear(cfg.nz, width), nn.ReLU(),
                                 nn.Linear(width, math.prod(self.shape)), nn.Tanh())

    def forward(self, z, y=None):
        return self.net(z).view(len(z), *self.shape)


class D(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        width = cfg.model_args.get("width", 32)
        self.net = nn.Sequential(nn.Flatten(),
                                 nn.Linear(math.prod(cfg.image_shape) * cfg.pack, width),
                                 nn.LeakyReLU(0.2), nn.Linear(width, 1))

    def forward(self, x, y=None):
        return self.net(x).flatten()


def generator(cfg):
    return G(cfg)


def discriminator(cfg):
    return D(cfg)
'''

TINY = ["dataset=array", "image_size=16", "channels=1", "nz=8", "batch_size=16", "steps=6",
        "log_every=2", "sample_every=3", "checkpoint_every=3", "n_samples=16", "eval_every=0",
        "model_args.width=16"]


def tiny_sets(model: Path, data: Path, *extra: str) -> list[str]:
    return [*TINY, f"model={model}", f"data={data}", *extra]


@pytest.fixture
def own(tmp_path: Path) -> tuple[Path, Path]:
    """A model file and an .npz of 16x16 grey images beside it."""
    model = tmp_path / "my_gan.py"
    model.write_text(MODEL)
    return model, write_npz(tmp_path / "images.npz")


def finish(session) -> None:
    session.join(120)
    assert not session.alive and not session.error, session.error
    assert session.state == "finished"


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


def test_own_model_trains_samples_and_warns_when_its_file_changes(own, tmp_path: Path) -> None:
    model, data = own
    args = [f"--set={s}" for s in tiny_sets(Path("my_gan.py"), data)]  # found from the cwd
    out = cli("train", "--no-ui", "--device", "cpu", "--name", "mine", *args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "finished 6 steps" in out.stdout
    run = tmp_path / "runs" / "mine"
    saved = config.read_toml(run / "config.toml")
    assert saved["model"] == str(model.resolve()) and saved["model_args"] == {"width": 16}
    state = load_checkpoint_file(RunStore.open(run).checkpoint_paths()[-1])
    assert state["model_source"] == hashlib.sha256(model.read_bytes()).hexdigest()

    out = cli("sample", str(run), "-n", "8", "--out", str(tmp_path / "s.png"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s.png").stat().st_size > 0

    model.write_text(MODEL + "\n# a comment: same weights, another file\n")
    out = cli("train", "--no-ui", "--device", "cpu", "--resume", str(run), "--set=steps=8",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "changed since this checkpoint" in out.stdout and "finished 8 steps" in out.stdout

    model.write_text(MODEL.replace('get("width", 32)', 'get("wide", 24)'))  # other shapes
    before = snapshot(run)
    out = cli("train", "--no-ui", "--device", "cpu", "--resume", str(run), "--set=steps=10",
              cwd=tmp_path)
    assert out.returncode == 1
    assert "do not fit" in out.stderr and "changed since this checkpoint" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert snapshot(run) == before


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint_file(RunStore.open(run).checkpoint_paths()[-1])
    return {**{f"G.{k}": v for k, v in state["G"].items()},
            **{f"D.{k}": v for k, v in state["D"].items()}}


def test_own_model_resumes_exactly_with_spectral_norm_and_ema(own, tmp_path: Path) -> None:
    model, data = own
    sets = tiny_sets(model, data, "spectral_norm=true", "ema=0.9", "loss=hinge")
    _, cfg = config.load("dcgan-mnist-plain", sets)
    straight = start(cfg, "own", runs_dir=tmp_path / "runs", name="straight", device="cpu")
    finish(straight)
    _, half = config.load("dcgan-mnist-plain", [*sets, "steps=3"])
    first = start(half, "own", runs_dir=tmp_path / "runs", name="halves", device="cpu")
    finish(first)
    second = start(None, "", resume=first.run_dir, sets=["steps=6"], device="cpu")
    finish(second)
    a, b = _weights(straight.run_dir), _weights(second.run_dir)
    assert a.keys() == b.keys()
    assert any("parametrizations.weight.original" in k for k in a)  # D got spectral norm
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_module_spec_pack_and_spectral_norm_on_any_d(own, tmp_path: Path, monkeypatch) -> None:
    model, data = own
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    _, cfg = config.load("dcgan-mnist-plain", tiny_sets(Path("x"), data, "model=mypkg.models",
                                                        "pack=2", "spectral_norm=true"))
    assert cfg.model == "mypkg.models"
    G, D = build_models(cfg)
    assert D(torch.zeros(8, 1, 16, 16)).shape == (4,)  # packed in pairs before D
    linears = [m for m in D.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(hasattr(m, "parametrizations") for m in linears)


BAD = [
    ("missing", None, "nothere.py does not exist"),
    ("import", MODEL.replace("import math", "import math\nimport not_a_module_xyz"),
     "failed to import"),
    ("syntax", MODEL.replace("def generator(cfg):", "def generator(cfg)"), "failed to import"),
    ("builder", MODEL.replace("def discriminator(cfg):", "def critic(cfg):"),
     "has no discriminator(cfg) function"),
    ("module", MODEL.replace("    return G(cfg)", "    return {'G': G(cfg)}"),
     "generator(cfg) in bad.py returned dict, not a torch.nn.Module"),
    ("shape", MODEL.replace("return self.net(z).view(len(z), *self.shape)",
                            "return torch.zeros(len(z), 3, 32, 32)"),
     "G of bad.py returned (4, 3, 32, 32); the data is (1, 16, 16)"),
    ("range", MODEL.replace(", nn.Tanh())", ")").replace("view(len(z), *self.shape)",
                                                          "view(len(z), *self.shape) * 50"),
     "images must be in [-1, 1]"),
    ("logits", MODEL.replace("return self.net(x).flatten()", "return self.net(x)"),
     "it must return one logit per sample, shape (4,)"),
    ("raises", MODEL.replace("return self.net(x).flatten()",
                             "raise RuntimeError('boom in my forward')"),
     "D of bad.py raised on the dry batch"),
    ("pack", MODEL.replace("* cfg.pack", ""), "pack = 2 needs a D"),
]


@pytest.mark.parametrize(("case", "source", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_model_is_one_line_and_leaves_nothing(case: str, source: str | None, message: str,
                                                  tmp_path: Path) -> None:
    data = write_npz(tmp_path / "images.npz")
    model = tmp_path / ("nothere.py" if source is None else "bad.py")
    if source is not None:
        model.write_text(source)
    runs = tmp_path / "runs"
    sets = tiny_sets(model, data, *(["pack=2"] if case == "pack" else []))
    result = CliRunner().invoke(app, ["train", "--no-ui", "--device", "cpu", "--runs-dir",
                                      str(runs), *[f"--set={s}" for s in sets]])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert [line for line in lines if line.startswith("error: ")] == [lines[-1]]
    assert "Traceback" not in result.stderr
    assert "gantui/" not in result.stderr.replace(str(tmp_path), "")  # no gantui internals
    if case in ("import", "syntax", "raises"):  # the user's own file and line come first
        assert f'File "{model}", line' in result.stderr
    if case == "raises":
        assert "RuntimeError: boom in my forward" in result.stderr
    assert not runs.exists() or not any(runs.iterdir())


def test_dry_batch_leaves_buffers_and_rng_alone(own) -> None:
    model, data = own
    model.write_text(MODEL.replace("nn.ReLU(),\n", "nn.BatchNorm1d(width), nn.ReLU(),\n", 1))
    _, cfg = config.load("dcgan-mnist-plain", tiny_sets(model, data))
    from gantui.models import user as usermodel

    torch.manual_seed(5)
    usermodel.build(cfg)  # construction alone, no dry batch
    expected = torch.rand(3)
    torch.manual_seed(5)
    G, _ = build_models(cfg)  # construction, then the dry batch
    assert torch.equal(torch.rand(3), expected)
    norm = next(m for m in G.modules() if isinstance(m, torch.nn.BatchNorm1d))
    assert int(norm.num_batches_tracked) == 0 and torch.equal(norm.running_mean,
                                                              torch.zeros_like(norm.running_mean))


def test_an_exception_inside_a_builder_shows_the_users_line(tmp_path: Path) -> None:
    model = tmp_path / "m.py"
    model.write_text(MODEL.replace("def generator(cfg):\n",
                                   "def generator(cfg):\n    1 / 0\n"))
    _, cfg = config.load("dcgan-mnist-plain", tiny_sets(model, tmp_path / "x.npz"))
    with pytest.raises(UserModelError) as caught:
        build_models(cfg)
    trace = "\n".join(caught.value.trace)
    assert f'File "{model}", line' in trace and "1 / 0" in trace
    assert trace.splitlines()[-1] == "ZeroDivisionError: division by zero"
    assert "gantui" not in trace.replace(str(tmp_path), "")


@pytest.mark.parametrize("preset", ["sngan-cifar10", "dcgan-cifar10"])
def test_cifar10_presets_load_build_and_train(preset: str, tmp_path: Path) -> None:
    data = write_cifar10(tmp_path / "cifar", per_batch=8)
    _, cfg = config.load(preset, [f"data={data}", "steps=2", "batch_size=8", "d_steps=1",
                                  "model_args.g_width=16", "model_args.d_width=16", "ngf=8",
                                  "ndf=8", "log_every=1", "sample_every=2", "n_samples=8",
                                  "eval_every=0"])
    assert (cfg.dataset, cfg.image_size, cfg.channels) == ("cifar10", 32, 3)
    if preset == "sngan-cifar10":
        assert Path(cfg.model).is_file() and cfg.model.endswith("examples/sngan.py")
        assert cfg.loss == "hinge"
    G, D = build_models(cfg)
    assert G(torch.randn(2, cfg.nz)).shape == (2, 3, 32, 32)
    session = start(cfg, preset, runs_dir=tmp_path / "runs", device="cpu")
    finish(session)


def test_sngan_example_is_conditional_with_a_projection_d(tmp_path: Path) -> None:
    data = write_cifar10(tmp_path / "cifar", per_batch=8)
    _, cfg = config.load("sngan-cifar10", [f"data={data}", "conditioning=embedding",
                                           "model_args.g_width=8", "model_args.d_width=8"])
    G, D = build_models(cfg)
    y = torch.arange(4)
    assert D(G(torch.randn(4, cfg.nz), y), y).shape == (4,)
