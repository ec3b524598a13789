"""Run under torchrun by tests/test_distributed.py: a real 2-rank CPU (gloo) run built from
gantui's own pieces, steered from rank 0 as ``gantui ctl`` would, each rank reporting what it
saw to ``OUT/rank-R.json``.

    torchrun --standalone --nproc-per-node 2 tests/dist_probe.py RUNS_DIR OUT PAUSE_S
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from pathlib import Path

import torch

from gantui import config
from gantui import events as ev
from gantui.engine import distributed
from gantui.session import start, start_worker


def params_digest(trainer) -> str:
    digest = hashlib.sha256()
    for module in (trainer.G, trainer.D):
        for p in module.parameters():
            digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def steer(trainer, controller, log: dict, pause_s: float) -> None:
    """Rank 0: a live change, a long pause, a checkpoint, a stop, as a user would."""
    while trainer.step < 12:
        time.sleep(0.01)
    log["set_ack"] = controller.set({"lr_g": 1e-4}, source="probe").result(60)["step"]
    paused = controller.pause(source="probe").result(60)["step"]
    log["pause_ack"] = paused
    time.sleep(pause_s)
    log["resume_ack"] = controller.resume(source="probe").result(60)["step"]
    while trainer.step < paused + 20:
        time.sleep(0.01)
    log["checkpoint"] = controller.checkpoint(source="probe").result(60)
    log["stop"] = controller.stop(source="probe").result(120)


def main() -> int:
    runs_dir, out, pause_s = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    world = distributed.launched()
    device, channel = distributed.init(world, "cpu")
    seen: list[ev.Event] = []
    log: dict = {"rank": world.rank}
    if world.main:
        _, cfg = config.load("ring-8", ["steps=100000", "log_every=10", "sample_every=50",
                                        "eval_every=0", "checkpoint_every=100000"])
        session = start(cfg, "ring-8", runs_dir=runs_dir, name="probe", world=world,
                        channel=channel, torch_device=device)
        trainer = session.trainer
        steering = threading.Thread(target=steer, args=(trainer, session.controller, log,
                                                        pause_s))
        steering.start()
        while session.alive:
            seen.extend(session.queue.drain())
            session.join(0.05)
        seen.extend(session.queue.drain())
        steering.join(5)
    else:
        trainer = start_worker(world, channel, device, seen.append)
        assert trainer is not None
        trainer.run()
    log.update(
        state=trainer.state, step=trainer.step, params=params_digest(trainer),
        lr_g=trainer.cfg.lr_g,
        changed=[(e.step, e.key, e.new) for e in seen if isinstance(e, ev.Changed)],
        states=[(e.step, e.state) for e in seen if isinstance(e, ev.StateChanged)],
        threads=torch.get_num_threads())
    (out / f"rank-{world.rank}.json").write_text(json.dumps(log, default=str))
    distributed.close()
    return 0


if __name__ == "__main__":
    from gantui.launch import leave_rank

    leave_rank(main())  # as gantui's own ranks end
