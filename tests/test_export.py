"""``export_tensorboard``: real tiny runs exported, then read back by an independent reader
(TFRecord framing and CRCs parsed here, each record decoded as an ``Event`` proto)."""

from __future__ import annotations

import io
import json
import shutil
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gantui.errors import GantuiError
from gantui.files import read_jsonl, read_toml_dict
from gantui.headless import follow
from gantui.session import start
from gantui.studies.export import INSTALL_HINT, ExportResult, export_tensorboard

from .conftest import tiny

pytestmark = pytest.mark.usefixtures("one_thread")

TAGS = {"loss_d": "loss/d", "loss_g": "loss/g", "d_real": "D/real", "d_fake": "D/fake",
        "d_fake_g": "D/fake_g", "grad_g": "grad/g", "grad_d": "grad/d", "lr_g": "lr/g",
        "lr_d": "lr/d", "img_per_s": "speed/img_per_s", "eta_s": "speed/eta_s",
        "data_wait": "speed/data_wait"}
"""The tags the export promises, spelled out again here rather than imported."""


# ---- an independent reader -----------------------------------------------------------------


def masked_crc(data: bytes) -> int:
    from tensorboardX.crc32c import crc32c

    x = crc32c(data) & 0xFFFFFFFF
    return (((x >> 15) | (x << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def read_records(path: Path) -> list[bytes]:
    """The records of one TFRecord file, every length and data CRC checked."""
    data, pos, out = path.read_bytes(), 0, []
    while pos < len(data):
        header = data[pos:pos + 8]
        (length,) = struct.unpack("<Q", header)
        (header_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
        assert header_crc == masked_crc(header), f"bad length CRC at {pos}"
        body = data[pos + 12:pos + 12 + length]
        (body_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
        assert len(body) == length and body_crc == masked_crc(body), f"bad data CRC at {pos}"
        out.append(body)
        pos += 16 + length
    assert pos == len(data), "trailing bytes after the last record"
    return out


def read_events(folder: Path) -> list:
    """Every event in the one event file of ``folder``."""
    from tensorboardX.proto.event_pb2 import Event

    files = sorted(folder.glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    events = [Event.FromString(body) for body in read_records(files[0])]
    assert events[0].file_version == "brain.Event:2"
    return events[1:]


def values(events: list) -> list[tuple]:
    """``(event, value)`` for every summary value, in file order."""
    return [(e, v) for e in events for v in e.summary.value]


def scalars(events: list) -> list[tuple[str, int, float]]:
    return [(v.tag, e.step, v.simple_value) for e, v in values(events)
            if v.WhichOneof("value") == "simple_value"]


def texts(events: list, tag: str) -> list[tuple[int, str]]:
    return [(e.step, v.tensor.string_val[0].decode()) for e, v in values(events)
            if v.tag == f"{tag}/text_summary"]


def f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


# ---- real runs -----------------------------------------------------------------------------


def trained(runs_dir: Path, preset: str, name: str, *sets: str) -> Path:
    session = start(tiny(preset, *sets), preset, runs_dir=runs_dir, name=name, device="cpu")
    session.controller.set({"lr_g": 1e-4}).result(timeout=30)  # a live change, journaled
    follow(session, 120)
    assert session.state == "finished", session.error
    return session.run_dir


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, one_thread) -> dict[str, Path]:
    """A ring run (samples, evaluations) and an MNIST run (grey image grids), both finished."""
    runs_dir = tmp_path_factory.mktemp("runs")
    return {"ring": trained(runs_dir, "ring-8", "ring", "eval_every=20"),
            "mnist": trained(runs_dir, "dcgan-mnist-plain", "mnist", "eval_every=0")}


def test_the_crc_is_crc32c() -> None:
    from tensorboardX.crc32c import crc32c

    assert crc32c(b"123456789") & 0xFFFFFFFF == 0xE3069283  # the CRC-32C check value


def test_scalars_quality_images_and_texts_read_back(runs: dict[str, Path],
                                                    tmp_path: Path) -> None:
    run = runs["ring"]
    result = export_tensorboard(run, tmp_path / "tb")
    assert result.path == tmp_path / "tb" / "ring"
    events = read_events(result.path)
    steps = [e.step for e in events]
    assert steps == sorted(steps), "events are written in step order"

    metrics = read_jsonl(run / "metrics.jsonl")
    quality = read_jsonl(run / "quality.jsonl")
    assert len(quality) == 3 and {"data_wait", "eta_s"} <= set(metrics[0])
    expected = [(TAGS[k], r["step"], f32(r[k])) for r in metrics for k in TAGS if k in r]
    expected += [(f"quality/{k}", q["step"], f32(v)) for q in quality
                 for k, v in q["values"].items()]
    got = scalars(events)
    assert sorted(got) == sorted(expected)
    assert result.scalars == len(expected) and result.skipped == 0
    times = {e.step: e.wall_time for e, v in values(events) if v.tag == "loss/d"}
    assert times == {r["step"]: r["time"] for r in metrics}

    pngs = sorted((run / "samples").glob("step-*.png"))
    images = [(e.step, v.image) for e, v in values(events) if v.tag == "samples"]
    assert [s for s, _ in images] == [int(p.stem[5:]) for p in pngs] == [20, 40, 60]
    for (_, image), png in zip(images, pngs, strict=True):
        decoded = Image.open(io.BytesIO(image.encoded_image_string))
        assert decoded.format == "PNG" and (image.width, image.height) == decoded.size
        original = np.asarray(Image.open(png).convert("RGB"))
        assert np.array_equal(np.asarray(decoded.convert("RGB")), original)
    assert result.images == 3

    config = read_toml_dict(run / "config.toml")
    ((step, table),) = texts(events, "config")
    assert step == 0 and table.startswith("| key | value |")
    assert f"| `lr_g` | `{config['lr_g']}` |" in table and "| `g_hidden` | `32, 32` |" in table
    assert all(f"| `{key}` |" in table for key in config)
    (change,) = [r for r in read_jsonl(run / "events.jsonl") if r.get("event") == "set"]
    ((step, journal),) = texts(events, "journal")
    assert step == change["step"]
    assert f"`lr_g`: `{change['old']}` → `{change['new']}`" in journal
    assert change["new"] == 1e-4 and result.texts == 2


def test_hparams_carry_the_config_and_name_the_metrics(runs: dict[str, Path],
                                                       tmp_path: Path) -> None:
    from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData

    result = export_tensorboard(runs["ring"], tmp_path)
    plugin = {v.tag: HParamsPluginData.FromString(v.metadata.plugin_data.content)
              for _, v in values(read_events(result.path))
              if v.metadata.plugin_data.plugin_name == "hparams"}
    assert set(plugin) == {f"_hparams_/{k}" for k in
                           ("experiment", "session_start_info", "session_end_info")}
    hparams = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["lr_g"].number_value == read_toml_dict(runs["ring"] / "config.toml")["lr_g"]
    assert hparams["preset"].string_value == "ring-8" and hparams["g_hidden"].string_value
    metrics = {m.name.tag for m in plugin["_hparams_/experiment"].experiment.metric_infos}
    # r_t (D's overfitting heuristic) is recorded at every evaluation, as the quality values
    assert metrics == {"loss/d", "loss/g", "quality/modes", "quality/hq", "quality/r_t"}


def test_runs_share_a_logdir_and_a_re_export_replaces_only_its_own_files(
        runs: dict[str, Path], tmp_path: Path) -> None:
    logdir = tmp_path / "tb"
    first = export_tensorboard(runs["ring"], logdir)
    mnist = export_tensorboard(runs["mnist"], logdir)
    assert mnist.images == 2 and mnist.texts == 2
    grey = [v.image for _, v in values(read_events(mnist.path)) if v.tag == "samples"]
    assert [image.colorspace for image in grey] == [3, 3]  # grey grids go out as RGB

    before = scalars(read_events(first.path))
    (old,) = first.path.glob("events.out.tfevents.*")
    shutil.copy(old, first.path / "events.out.tfevents.1000000000.elsewhere")  # an older export
    (first.path / "notes.txt").write_text("mine")
    (first.path / "events.out.tfevents.dir").mkdir()
    again = export_tensorboard(runs["ring"], logdir)
    assert again == first
    files = sorted(p.name for p in first.path.iterdir() if p.is_file())
    assert len(files) == 2 and files[1] == "notes.txt" and "elsewhere" not in files[0]
    assert (first.path / "events.out.tfevents.dir").is_dir()  # not a file: not ours
    assert sorted(scalars(read_events_file(first.path))) == sorted(before)
    assert len(read_events(mnist.path)) > 0  # the other run is untouched


def read_events_file(folder: Path) -> list:
    """The events of the one event *file* in ``folder`` (a folder of that name ignored)."""
    from tensorboardX.proto.event_pb2 import Event

    (path,) = [p for p in folder.glob("events.out.tfevents.*") if p.is_file()]
    return [Event.FromString(body) for body in read_records(path)][1:]


def test_non_finite_torn_and_hostile_records_are_skipped(runs: dict[str, Path],
                                                         tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(runs["ring"], run)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step":70,"loss_d":NaN,"loss_g":1e300,"d_real":0.5,"grad_g":true,'
                 '"lr_g":"x","time":Infinity,"bad tag\\u001b":1}\n')
        fh.write('{"step":80,"loss_d":Infinity,"loss_g":-Infinity}\n{"step":90,"loss_d":0.2')
    with open(run / "quality.jsonl", "a") as fh:
        fh.write('{"step":70,"values":{"modes":NaN,"hq":0.5}}\n{"step":"x","values":{}}\n')
    (run / "samples" / "step-00000070.png").write_bytes(b"not a png")
    with open(run / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"event": "set", "step": 75, "key": "lr_d\x1b[2J",
                             "old": 1, "new": [1, "a|b`c"]}) + "\n")
    result = export_tensorboard(run, tmp_path / "tb")
    got = scalars(read_events(result.path))
    assert result.skipped == 5 and result.images == 3
    assert [(t, v) for t, s, v in got if s == 70] == [("D/real", 0.5), ("quality/hq", 0.5)]
    assert not [s for _, s, _ in got if s >= 80]
    ((step, journal),) = [t for t in texts(read_events(result.path), "journal") if t[0] == 75]
    assert "\x1b" not in journal and "`lr_d\\x1b[2J`" in journal and "`1, a\\|b'c`" in journal


def test_bad_inputs_raise_one_line(runs: dict[str, Path], tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    only_config = tmp_path / "only-config"
    only_config.mkdir()
    (only_config / "config.toml").write_text('preset = "ring-8"\n')
    torn = tmp_path / "torn"
    shutil.copytree(only_config, torn)
    (torn / "metrics.jsonl").write_text('{"step": 1, "loss_d"\n[1, 2]\n')
    cases = [(tmp_path / "missing", "no run directory"), (empty, "not a gantui run"),
             (only_config, "no metrics.jsonl"), (torn, "no metrics to export")]
    for path, fragment in cases:
        with pytest.raises(GantuiError, match=fragment) as info:
            export_tensorboard(path, tmp_path / "tb")
        assert "\n" not in str(info.value)
    (tmp_path / "tb").mkdir(exist_ok=True)
    (tmp_path / "tb" / "ring").write_text("a file where the run's folder would go")
    with pytest.raises(GantuiError, match="not a directory"):
        export_tensorboard(runs["ring"], tmp_path / "tb")
    assert not list(tmp_path.glob("tb/*/events.out.tfevents.*"))

    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if not installed
    with pytest.raises(GantuiError) as info:
        export_tensorboard(runs["ring"], tmp_path / "tb2")
    assert str(info.value) == INSTALL_HINT and not (tmp_path / "tb2").exists()


def test_the_result_is_a_small_frozen_record(tmp_path: Path) -> None:
    result = ExportResult(tmp_path, 1, 2, 3)
    with pytest.raises(AttributeError):
        result.scalars = 4  # type: ignore[misc]


def test_tensorboard_itself_reads_the_export(runs: dict[str, Path], tmp_path: Path) -> None:
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    result = export_tensorboard(runs["ring"], tmp_path)
    acc = accumulator.EventAccumulator(str(result.path), size_guidance={"images": 0,
                                                                       "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert set(TAGS.values()) <= set(tags["scalars"]) and "quality/modes" in tags["scalars"]
    metrics = read_jsonl(runs["ring"] / "metrics.jsonl")
    assert [(s.step, s.value) for s in acc.Scalars("loss/d")] == [
        (r["step"], f32(r["loss_d"])) for r in metrics]
    assert [i.step for i in acc.Images("samples")] == [20, 40, 60]
    assert {"config/text_summary", "journal/text_summary"} <= set(tags["tensors"])
