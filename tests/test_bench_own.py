"""``gantui bench`` on one's own model: what it says when the model fails (the bench stops at
its first measured run, the bare loop, in a fresh process: one interpreter start)."""

from __future__ import annotations

from pathlib import Path

from .conftest import cli
from .owndata import write_cifar10
from .test_own_gan import MODEL

BENCH = ["bench", "--device", "cpu", "--steps", "4", "--rounds", "1", "--set", "log_every=2"]


def test_bench_shows_the_users_traceback_when_their_model_raises(tmp_path: Path) -> None:
    """As `gantui train` does: the user's file and line, their exception, then one line
    without the exception's class path (missing data reads as train says it, too)."""
    model = tmp_path / "bad.py"
    model.write_text(MODEL.replace("return self.net(x).flatten()",
                                   "raise RuntimeError('boom in my forward')"))
    data = write_cifar10(tmp_path / "cifar", per_batch=4)
    out = cli(*BENCH, "--preset", "sngan-cifar10", "--data", str(data), "--set",
              f"model={model}", "--set", "model_args.width=8", "--set", "batch_size=4")
    assert out.returncode == 1
    err = out.stderr.strip().splitlines()
    assert err[-1].startswith("error: the bare-loop run failed: D of bad.py raised on the dry "
                              "batch") and "its traceback is above" in err[-1]
    assert f'File "{model}", line' in err[0] and err[-2] == "RuntimeError: boom in my forward"
    assert "Traceback" not in out.stderr and "UserModelError" not in out.stderr
    assert "gantui/" not in out.stderr.replace(str(tmp_path), "")
