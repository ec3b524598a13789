"""CUDA paths: no host sync inside training steps, AMP runs. Skipped without a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gantui.engine.control import Controller
from gantui.engine.trainer import Trainer
from gantui.run.store import RunStore

from .conftest import make_image_folder, tiny

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def build(cfg, tmp_path: Path) -> Trainer:
    store = RunStore.create(tmp_path, "cuda", cfg.to_dict())
    return Trainer(cfg, store=store, emit=lambda event: None, controller=Controller(),
                   device=torch.device("cuda"), preset="test", name="cuda")


@pytest.mark.parametrize("preset", ["dcgan-mnist-plain", "cdcgan-mnist", "mlp-mnist", "ring-8"])
@pytest.mark.parametrize("options", [("amp=false",), ("amp=true",),
                                     ("amp=true", "channels_last=true"),
                                     ("compile=true", "amp=true"),
                                     ("compile=true", "channels_last=true", "amp=true"),
                                     ("tf32=false",)])
def test_training_steps_do_not_sync_with_the_host(preset: str, options: tuple[str, ...],
                                                  tmp_path: Path) -> None:
    trainer = build(tiny(preset, "batch_size=64", *options), tmp_path)
    for _ in range(3):  # warm up: compile, cuDNN autotuning, allocator growth, the permutation
        trainer.d_step()
        trainer.g_step()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(5):
            trainer.d_step()
            trainer.g_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.log()  # the one sync per log interval, with finite values


@pytest.mark.parametrize("cached", [False, True])
def test_folder_data_on_cuda(tmp_path: Path, cached: bool, monkeypatch) -> None:
    monkeypatch.setenv("GANTUI_CACHE", str(tmp_path / "cache"))
    root = make_image_folder(tmp_path / "imgs", n=40, size=72)
    if cached:
        from gantui.data.cache import prepare

        prepare(root, 64, 3, workers=0)
    trainer = build(tiny("dcgan-celeba", f"data={root}", "batch_size=16", "num_workers=2",
                         "amp=true", "channels_last=true"), tmp_path)
    assert ("prepared cache" in trainer.batches.note) == cached
    for _ in range(4):
        trainer.d_step()
        trainer.g_step()
    assert trainer.log()
    trainer.previews.draw()
    assert trainer.checkpoints.write("test") is not None
