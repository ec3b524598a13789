"""The averaged G's batch-norm statistics: computed from its own activations, saved with it,
and reproduced exactly on resume."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from gantui.engine import ema
from gantui.models.builtin import build_models
from gantui.models.latent import training_noise

from .conftest import straight_and_resumed, tiny


def test_calibration_gives_the_averaged_g_its_own_statistics() -> None:
    cfg = tiny("dcgan-mnist-plain", "batch_size=32")
    G, _ = build_models(cfg)
    G.train()
    with torch.no_grad():  # G's statistics after a few batches of its own
        for _ in range(3):
            G(*training_noise(cfg, 32, torch.Generator().manual_seed(1)))
    average = copy.deepcopy(G)
    with torch.no_grad():  # another network: its first layer's outputs twice as large
        next(average.parameters()).mul_(2.0)
    ema.update(average, G, decay=1.0)  # weights kept, statistics copied from G (stale)
    first = ema.norms(average)[0]
    inputs: list[torch.Tensor] = []
    hook = first.register_forward_pre_hook(lambda m, args: inputs.append(args[0].detach()))
    rng = torch.get_rng_state()
    ema.calibrate(average, cfg, step=7, device="cpu")
    hook.remove()
    assert torch.equal(torch.get_rng_state(), rng)  # the training streams are not touched
    assert not average.training
    assert len(inputs) == ema.CALIBRATION_SAMPLES // cfg.batch_size
    dims = [0, *range(2, inputs[0].ndim)]
    mean = torch.stack([x.mean(dims) for x in inputs]).mean(0)
    var = torch.stack([x.var(dims, unbiased=True) for x in inputs]).mean(0)
    assert torch.allclose(first.running_mean, mean, atol=1e-5)
    assert torch.allclose(first.running_var, var, rtol=1e-4)
    stale = ema.norms(G)[0]
    assert not torch.allclose(first.running_var, stale.running_var, rtol=0.1)
    before = {k: v.clone() for k, v in average.state_dict().items()}
    ema.calibrate(average, cfg, step=7, device="cpu")  # the same step: the same numbers
    assert all(torch.equal(before[k], v) for k, v in average.state_dict().items())


def test_a_run_saves_and_resumes_the_calibrated_average(runs_dir: Path) -> None:
    base = ["ema=0.9", "eval_every=0", "checkpoint_every=3", "sample_every=2", "log_every=3"]
    a, b = straight_and_resumed(runs_dir, "dcgan-mnist-plain", base, 6)  # the twin resumes from 3
    for part in ("G", "D", "G_ema"):
        for name, tensor in a[part].items():
            assert torch.equal(tensor, b[part][name]), (part, name)
    # what was saved is the averaged weights with statistics of their own, not G's
    cfg = tiny("dcgan-mnist-plain", *base, "steps=6")
    average, _ = build_models(cfg)
    average.load_state_dict(a["G_ema"])
    ema.calibrate(average, cfg, step=6, device="cpu")
    for name, tensor in average.state_dict().items():
        assert torch.equal(tensor, a["G_ema"][name]), name
    stats = [k for k in a["G"] if k.endswith("running_var")]
    assert stats and all(not torch.equal(a["G"][k], a["G_ema"][k]) for k in stats)
