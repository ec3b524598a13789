"""Imports point one way. Read every module's imports (also those inside functions) and check
them against the layers below, lowest first: a module may import its own unit (package or
module) and anything in a lower layer, never sideways into another unit of its layer, never up.

    errors, text, files, events, history,     plain Python: no gantui imports; procs: children
    procs, terminal                           that end with their launcher; terminals that stall
    chart, config, notify                     drawing series; the run's settings; notices
    data, models, live                        sources, cache, grids; the networks; live keys
    run                                       run directories: store, lock, restore, follow
    system                                    machine samples (written into a run)
    quality                                   scores, the judge, health
    engine                                    the loop and its rooms, DDP, speed options
    remote                                    control.sock: server and client
    session                                   wires lock, store, socket, sampler, trainer
    headless, studies, perf                   consumers of runs and sessions
    api                                       your own loop: a run directory without a trainer
    ui                                        the only Textual importer
    launch, runner                            torchrun and script launchers (follow with the ui)
    cli                                       argument parsing, one call each
    __main__                                  python -m gantui

No cycles either, inside a package included. Imports under ``if TYPE_CHECKING:`` name types
for annotations and are never executed, so they are not counted.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gantui"

LAYERS: list[list[str]] = [
    ["errors", "text", "files", "events", "history", "procs", "terminal"],
    ["chart", "config", "notify"],
    ["data", "models", "live"],
    ["run"],
    ["system"],
    ["quality"],
    ["engine"],
    ["remote"],
    ["session"],
    ["headless", "studies", "perf"],
    ["api"],
    ["ui"],
    ["launch", "runner"],
    ["cli"],
    ["__main__"],
]
TEXTUAL = ("textual", "textual_image", "textual_serve")
"""Third-party packages only ``ui`` may import."""
LIGHT = ["gantui.cli", "gantui.system", "gantui.studies.report", "gantui.studies.figures"]
"""Modules whose import (module level, transitively) loads none of :data:`HEAVY`:
``gantui --help`` starts fast, the system sampler runs in light processes, and a report
pays for matplotlib only when it draws."""
HEAVY = {"torch", "torchvision", "matplotlib", *TEXTUAL}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


MODULES = _modules()


def _resolve(name: str) -> str:
    while name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def _is_type_checking(node: ast.AST) -> bool:
    """``if TYPE_CHECKING:``: names for annotations only, never imported at run time."""
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and \
        node.test.id == "TYPE_CHECKING"


@cache
def _imports(module: str, top_level_only: bool = False) -> tuple[set[str], set[str]]:
    """(gantui modules, third-party top-level packages) that ``module`` imports."""
    tree = ast.parse(MODULES[module].read_text())
    typing_only = {id(n) for block in ast.walk(tree) if _is_type_checking(block)
                   for n in ast.walk(block)}
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    nodes = [n for n in nodes if id(n) not in typing_only]
    ours: set[str] = set()
    theirs: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES
                     else node.module for alias in node.names]
        else:
            continue
        for name in names:
            if name == "gantui" or name.startswith("gantui."):
                ours.add(_resolve(name))
            else:
                theirs.add(name.split(".")[0])
    ours.discard(module)
    ours.discard("gantui")  # the package's own __init__: a version string
    return ours, theirs


def _unit(module: str) -> str:
    return module.split(".")[1] if module != "gantui" else ""


def _layer(module: str) -> int:
    unit = _unit(module)
    for index, units in enumerate(LAYERS):
        if unit in units:
            return index
    raise AssertionError(f"{module} is in no layer: add its package or module to LAYERS")


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        if module != "gantui":
            _layer(module)


def test_imports_point_down() -> None:
    wrong = []
    for module in MODULES:
        if module == "gantui":
            continue
        for target in sorted(_imports(module)[0]):
            same_unit = _unit(target) == _unit(module)
            if not same_unit and _layer(target) >= _layer(module):
                wrong.append(f"{module} imports {target} (layer {_layer(module)} -> "
                             f"{_layer(target)})")
    assert not wrong, "imports that point sideways or up:\n" + "\n".join(wrong)


def test_no_import_cycles() -> None:
    graph = {m: _imports(m)[0] for m in MODULES}
    state: dict[str, int] = {}  # 1 on the path, 2 done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join([*path[path.index(nxt):], nxt]))
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in MODULES:
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_only_the_ui_imports_textual() -> None:
    wrong = [f"{m} imports {sorted(_imports(m)[1] & set(TEXTUAL))}" for m in MODULES
             if _unit(m) != "ui" and _imports(m)[1] & set(TEXTUAL)]
    assert not wrong, "\n".join(wrong)


def test_light_modules_load_nothing_heavy() -> None:
    for start in LIGHT:
        seen, todo, third = set(), [start], set()
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            ours, theirs = _imports(module, top_level_only=True)
            third |= theirs
            todo.extend(ours)
        assert not third & HEAVY, (start, sorted(third & HEAVY))


def test_the_checks_catch_a_wrong_import(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not vacuous: an engine module importing the UI (and Textual) is caught."""
    original = _imports

    def with_bad(module: str, top_level_only: bool = False) -> tuple[set[str], set[str]]:
        ours, theirs = original(module, top_level_only)
        if module == "gantui.engine.trainer":
            return ours | {"gantui.ui.app"}, theirs | {"textual"}
        return ours, theirs

    monkeypatch.setattr(sys.modules[__name__], "_imports", with_bad)
    with pytest.raises(AssertionError, match="engine.trainer imports gantui.ui.app"):
        test_imports_point_down()
    with pytest.raises(AssertionError, match="engine.trainer imports"):
        test_only_the_ui_imports_textual()
