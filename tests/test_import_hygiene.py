"""Imports point one way: the core never loads Textual; the CLI's help never loads torch."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = ["gantui.config", "gantui.events", "gantui.engine.control", "gantui.engine.models",
        "gantui.engine.data", "gantui.engine.losses", "gantui.engine.trainer",
        "gantui.run.store", "gantui.quality.metrics", "gantui.engine.session",
        "gantui.headless"]


def loaded_after(code: str) -> set[str]:
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True)
    return set(json.loads(out.stdout.splitlines()[-1]))


def test_core_does_not_import_textual() -> None:
    modules = loaded_after("\n".join(f"import {m}" for m in CORE))
    assert "torch" in modules
    assert not {m for m in modules if m == "textual" or m.startswith("textual.")}
    assert not {m for m in modules if m.startswith("gantui.ui")}


def test_cli_module_does_not_import_torch_or_textual() -> None:
    modules = loaded_after("import gantui.cli")
    assert "torch" not in modules and "textual" not in modules
