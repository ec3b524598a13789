"""The run directory: atomic checkpoints, append-only journals, strict loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gantui.run.store import (
    CHECKPOINT_KEYS,
    RunStore,
    StoreError,
    atomic_write_bytes,
    load_checkpoint_file,
    read_jsonl,
)


def _state(step: int) -> dict:
    state = {key: {} for key in CHECKPOINT_KEYS}
    state.update(version=1, step=step, config={"lr_g": 1e-3},
                 G={"w": torch.full((2,), float(step))}, fixed_noise=torch.zeros(3))
    return state


def test_create_refuses_to_clobber_an_existing_run(tmp_path: Path) -> None:
    RunStore.create(tmp_path, "a", {"x": 1})
    with pytest.raises(StoreError, match="already exists; resume it with --resume"):
        RunStore.create(tmp_path, "a", {"x": 2})
    assert (tmp_path / "a" / "config.toml").read_text() == "x = 1\n"


def test_checkpoints_rotate_and_load_newest(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r", {})
    for step in (10, 20, 30, 40):
        store.save_checkpoint(_state(step), keep=2)
    assert [p.name for p in store.checkpoint_paths()] == ["ckpt-00000030.pt",
                                                         "ckpt-00000040.pt"]
    assert not list(store.checkpoints.glob(".*tmp*"))
    path, state = store.load_checkpoint()
    assert state["step"] == 40 and torch.equal(state["G"]["w"], torch.full((2,), 40.0))


def test_truncated_newest_falls_back_with_a_warning(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r", {})
    store.save_checkpoint(_state(1), keep=3)
    newest = store.save_checkpoint(_state(2), keep=3)
    newest.write_bytes(newest.read_bytes()[:50])
    warnings: list[str] = []
    _, state = store.load_checkpoint(warn=warnings.append)
    assert state["step"] == 1
    assert len(warnings) == 1 and "ckpt-00000002.pt is unreadable" in warnings[0]
    assert newest.exists()  # readers (sample, watch) never move files
    _, state = store.load_checkpoint(warn=warnings.append, quarantine=True)  # the owner does
    assert state["step"] == 1 and not newest.exists()
    assert (store.checkpoints / "ckpt-00000002.pt.bad").exists()
    assert [p.name for p in store.checkpoint_paths()] == ["ckpt-00000001.pt"]


def test_other_versions_are_never_quarantined(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r", {})
    store.save_checkpoint(_state(1), keep=3)
    future = store.save_checkpoint({**_state(2), "version": 2}, keep=3)
    _, state = store.load_checkpoint(warn=lambda m: None, quarantine=True)
    assert state["step"] == 1 and future.exists()


class Evil:
    """A pickled object: what weights_only=True must refuse."""


def test_loading_is_strict(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r", {})
    path = store.checkpoints / "ckpt-00000005.pt"
    torch.save({"step": 5}, path)
    with pytest.raises(StoreError, match="lacks version"):
        load_checkpoint_file(path)

    torch.save({**_state(6), "extra": Evil()}, path)
    with pytest.raises(StoreError, match="unreadable"):
        load_checkpoint_file(path)
    with pytest.raises(StoreError, match="no loadable checkpoint"):
        store.load_checkpoint()


def test_no_checkpoint_and_not_a_run(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r", {})
    with pytest.raises(StoreError, match="has no checkpoints"):
        store.load_checkpoint()
    (tmp_path / "plain").mkdir()
    with pytest.raises(StoreError, match="not a gantui run"):
        RunStore.open(tmp_path / "plain")
    with pytest.raises(StoreError, match="no run directory"):
        RunStore.open(tmp_path / "missing")


def test_jsonl_is_append_only_and_tolerates_a_torn_line(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "r", {})
    store.append_metrics({"step": 1, "loss_d": 0.5})
    store.append_event({"event": "set", "key": "lr_g", "old": 1, "new": 2, "step": 1})
    with open(store.path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 2, "loss')  # a crash mid-line
    assert read_jsonl(store.path / "metrics.jsonl") == [{"step": 1, "loss_d": 0.5}]
    assert store.events()[0]["key"] == "lr_g"
    store.close()


def test_atomic_write_replaces_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "f.json"
    atomic_write_bytes(target, json.dumps({"a": 1}).encode())
    atomic_write_bytes(target, json.dumps({"a": 2}).encode())
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_the_last_event_stays_last_even_with_a_write_stuck_under_way(tmp_path: Path) -> None:
    store = RunStore.create(tmp_path, "a", {"x": 1})
    store.append_event({"event": "state", "state": "running"})
    store._events_lock.acquire()  # a trainer write that hangs on the disk
    try:
        store.last_event({"event": "state", "state": "stopped"})  # waits a second, not forever
    finally:
        store._events_lock.release()
    store.append_event({"event": "checkpoint", "reason": "stop"})  # the trainer, too late
    assert [r.get("state") for r in store.events()] == ["running", "stopped"]
