"""The README tells the truth: CI runs its commands, and the commands and keys it shows exist."""

from __future__ import annotations

import re
from pathlib import Path

from .conftest import cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
CI = (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def fenced_after(heading: str) -> str:
    """The first ```bash block under ``heading``."""
    section = README.split(heading, 1)[1]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1).strip()


def test_ci_runs_the_readme_install_and_test_commands() -> None:
    install = fenced_after("## Install")
    test = fenced_after("## Test")
    ci_lines = [line.strip() for line in CI.splitlines()]
    assert install in ci_lines
    assert test in ci_lines
    assert "python3 -m venv" in CI


def test_every_gantui_command_in_the_readme_exists() -> None:
    commands = set(re.findall(r"^gantui (\w+)", README, re.M))
    assert {"presets", "train", "runs", "watch", "ctl"} <= commands
    for command in sorted(commands):
        out = cli(command, "--help")
        assert out.returncode == 0, (command, out.stderr)


def test_every_key_in_the_readme_is_bound() -> None:
    from gantui.ui.app import GantuiApp

    table = README.split("## The dashboard", 1)[1].split("##", 1)[0]
    keys = set(re.findall(r"^\| `(.)` \|", table, re.M))
    bound = {b.key_display or b.key for b in GantuiApp.BINDINGS}
    assert keys and keys <= bound, keys - bound
