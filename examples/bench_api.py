"""What gantui.api costs a training loop: run.step() plus run.log() of ten scalars per step.

    python examples/bench_api.py [--steps 200000] [--log-every 10] [--tensors]

Times the same empty loop with and without the two calls (best of a few repeats) and prints
the difference in microseconds per step. With --tensors the ten values are 0-d CPU tensors
(read once per log interval, in one batch), else Python floats. The run directory goes to a
temporary folder; the control socket, journal, system sampler and metrics file are live, as
in a real run. A benchmark, not a test: the figure depends on the machine.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import gantui.api as gantui


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tensors", action="store_true", help="log 0-d tensors, not floats")
    args = parser.parse_args()
    if args.tensors:
        import torch

        torch.set_num_threads(1)
        values = {f"v{i}": torch.tensor(float(i)) for i in range(10)}
    else:
        values = {f"v{i}": float(i) for i in range(10)}
    v0, v1, v2, v3, v4, v5, v6, v7, v8, v9 = values.values()
    n = args.steps

    def bare() -> float:
        started = time.perf_counter()
        for _ in range(n):
            pass
        return time.perf_counter() - started

    with tempfile.TemporaryDirectory() as runs:
        run = gantui.init({"bench": True}, runs_dir=runs, total_steps=n * args.repeats,
                          log_every=args.log_every, echo=False)
        offset = 0

        def instrumented() -> float:
            nonlocal offset
            started = time.perf_counter()
            for step in range(offset, offset + n):
                if not run.step(step):
                    break
                run.log(step + 1, v0=v0, v1=v1, v2=v2, v3=v3, v4=v4, v5=v5, v6=v6, v7=v7,
                        v8=v8, v9=v9)
            offset += n
            return time.perf_counter() - started

        with run:
            base = min(bare() for _ in range(args.repeats))
            with_api = min(instrumented() for _ in range(args.repeats))
        records = sum(1 for _ in open(run.path / "metrics.jsonl"))
    cost = (with_api - base) / n * 1e6
    kind = "0-d tensors" if args.tensors else "floats"
    print(f"gantui.api overhead: {cost:.2f} us/step (run.step + run.log of 10 {kind}, "
          f"log_every {args.log_every}; {records} metrics records written)")


if __name__ == "__main__":
    main()
