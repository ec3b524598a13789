"""One reading of a sweep directory, one table: ``gantui sweep``'s summary.csv/summary.md and
``gantui report SWEEP_DIR`` show the same rows, built by :mod:`gantui.studies.summary`, and a
damaged or hostile sweep gives one-line errors or ``missing`` rows, never a traceback."""

from __future__ import annotations

import csv
import html
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from gantui import config
from gantui.errors import GantuiError
from gantui.headless import follow
from gantui.session import start
from gantui.studies import sweep as sweep_mod
from gantui.studies.report import report_sweep
from gantui.studies.summary import RESULT_COLUMNS, read_sweep, summarise

from .conftest import TINY_RING

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def swept(tmp_path_factory, one_thread) -> sweep_mod.Plan:
    """A real two-point sweep (``pack=1,2``) claimed by :class:`Sweep`, its first point
    trained in-process at toy size with evaluations, its second never started."""
    root = tmp_path_factory.mktemp("summary")
    plan = sweep_mod.plan("ring-8", ["pack=1,2"], sets=[*TINY_RING, "eval_every=20"],
                          runs_dir=root)
    sweep_mod.Sweep(plan).claim()
    first = plan.runs[0]
    cfg = config.load("ring-8", plan.run_sets(first["params"]))[1]
    session = start(cfg, "ring-8", runs_dir=plan.path, name=first["name"], device="cpu")
    follow(session, 120)
    assert session.state == "finished", session.error
    (plan.path / "walls.json").write_text(json.dumps({first["name"]: 12.4}))
    return plan


def _html_tables(text: str) -> list[list[list[str]]]:
    """Every ``<table>`` of a report as rows of unescaped cells, the header row first."""
    tables = []
    for table in re.findall(r"<table>(.*?)</table>", text, re.S):
        rows = re.findall(r"<tr>(.*?)</tr>", table, re.S)
        tables.append([[html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", row)]
                       for row in rows])
    return tables


def test_the_sweep_and_its_report_show_the_same_table(swept, tmp_path: Path) -> None:
    statuses = [sweep_mod.RunStatus(r["name"], r["params"]) for r in swept.runs]  # pending
    md_path, csv_path, figure = sweep_mod.write_results(swept, statuses)
    assert figure is not None and figure.read_bytes()[:4] == b"\x89PNG"
    rows = list(csv.reader(csv_path.open()))
    header = ["run", "pack", "seed", "state", "step", "metric", "final", "best", "best_step",
              "loss_d", "loss_g", "img_per_s", "wall_s"]
    assert rows[0] == header
    trained, pending = (dict(zip(header, r, strict=True)) for r in rows[1:])
    assert trained["run"] == swept.runs[0]["name"] and trained["pack"] == "1"
    assert trained["state"] == "finished" and trained["step"] == "60"
    assert trained["metric"] == "modes" and re.fullmatch(r"\d \(hq \d+\.\d%\)", trained["final"])
    assert re.fullmatch(r"\d", trained["best"]) and trained["best_step"] in ("20", "40", "60")
    assert re.fullmatch(r"-?\d+\.\d{4}", trained["loss_d"]) and trained["wall_s"] == "12"
    assert float(trained["img_per_s"]) > 0
    assert pending["state"] == "pending" and pending["pack"] == "2"  # the sweep's live state
    assert all(pending[c] == "" for c in RESULT_COLUMNS[1:])
    md = md_path.read_text()
    assert "| run | pack | seed | state | step | metric | final | best | best_step |" in md

    report = report_sweep(swept.path, tmp_path / "report")
    tables = _html_tables(report.read_text())
    assert len(tables) == 1  # one table, not the report's own beside summary.csv
    (shown,) = tables
    assert shown[0] == header and shown[1] == rows[1]  # the same cells, read anew
    assert shown[2] == [*rows[2][:3], "missing", *[""] * (len(RESULT_COLUMNS) - 1)]
    report_md = (tmp_path / "report" / "report.md").read_text()
    assert "| run | pack | seed | state | step |" in report_md
    assert "**runs** 1 with metrics of 2" in report_md


def test_damaged_runs_are_missing_rows_and_hostile_text_is_inert(swept, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    good = swept.runs[0]["name"]
    sweep.mkdir()
    shutil.copytree(swept.path / good, sweep / good)
    for name in ("fifo", "bad-toml", "no-metrics"):
        shutil.copytree(swept.path / good, sweep / name)
    (sweep / "fifo" / "metrics.jsonl").unlink()
    os.mkfifo(sweep / "fifo" / "metrics.jsonl")  # would block a naive reader for ever
    (sweep / "bad-toml" / "config.toml").write_text("pack = [unclosed\n")
    (sweep / "no-metrics" / "metrics.jsonl").write_text("")
    (sweep / "walls.json").write_text(json.dumps({good: "NaN", "fifo": [1], "x": 1e400}))
    evil = "<script>alert(1)</script>|`$"
    deep = json.loads("[" * 500 + "]" * 500)
    runs = [{"name": good, "params": {"pack": evil, "seed": deep}},
            *({"name": n, "params": {"pack": 1}} for n in ("fifo", "bad-toml", "no-metrics",
                                                           "absent")),
            {"name": "../escape"}, {"name": "a\\b"}, {"name": ""}, {"name": 7}, "a string",
            {"name": evil, "params": "not a dict"}]
    (sweep / "sweep.json").write_text(json.dumps({
        "version": 1, "name": evil, "preset": ["x"], "vary": {"pack": evil, evil: [1]},
        "seeds": "zero", "sets": [deep], "runs": runs}))

    spec = read_sweep(sweep)
    assert spec.vary == {"pack": [evil], evil: [1]} and spec.seeds == [] and spec.sets == [deep]
    table = summarise(sweep, spec.runs, spec.vary)
    assert table.columns == ["run", "pack", evil, "seed", *RESULT_COLUMNS]
    states = [row[4] for row in table.rows]
    assert states == ["finished", "missing", "missing", "missing (no metrics)", "missing",
                      *["missing (bad name in sweep.json)"] * 6]
    assert table.rows[0][1] == evil and table.rows[0][3] == "[…]"  # nesting is not recursed
    assert table.rows[0][-1] == ""  # a NaN wall time is no wall time
    assert [r.run_dir is not None for r in table.runs] == [True, False, False, True,
                                                           *[False] * 7]

    path = report_sweep(sweep)
    text = path.read_text()
    assert "<script" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;|`$" in text
    md = (path.parent / "report.md").read_text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;\\|\\`\\$" in md and "<script" not in md
    assert "**runs** 1 with metrics of 11" in md


def test_a_sweep_json_that_cannot_be_used_is_one_line(tmp_path: Path) -> None:
    cases = {"dir": (None, "is not a gantui run or sweep directory"),
             "fifo": (None, "is not a gantui run or sweep directory"),
             "list": ("[1, 2]", "sweep.json: not a JSON object"),
             "version": (json.dumps({"version": "9" * 5000, "runs": [{}]}),
                         r"has version 9{20}…; this gantui reads version 1"),
             "runs": ('{"runs": {"name": "a"}}', "lists no runs: nothing to report")}
    for name, (text, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        if name == "dir":
            (folder / "sweep.json").mkdir()
        elif name == "fifo":
            os.mkfifo(folder / "sweep.json")
        else:
            (folder / "sweep.json").write_text(text)
        with pytest.raises(GantuiError, match=message) as info:
            read_sweep(folder)
        assert "\n" not in str(info.value) and len(str(info.value)) < 400
