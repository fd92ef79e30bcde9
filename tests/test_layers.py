"""The package's layers: every import of a lokt_tasks module points down.

``LAYERS`` is the table docs/architecture.md draws, bottom first. A module
may import modules of lower layers only, never one of its own layer or
above, so the graph has no cycle and each layer can be read and tested
without the ones above it.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import lokt_tasks

PACKAGE = Path(lokt_tasks.__file__).resolve().parent
ARCHITECTURE = PACKAGE.parent / "docs" / "architecture.md"

#: Bottom first. The first layer imports nothing of the package.
LAYERS: List[Set[str]] = [
    {"__init__", "errors", "states", "system", "text"},
    {"ci", "config", "console", "globs", "junit", "lockfile"},
    {"attempt", "durations"},
    {"engine", "leases", "plan", "watchdog"},
    {"embedded", "lokt_engine", "results"},
    {"run", "verdict"},
    {"flags", "report", "schedule", "status"},
    {"tasks"},
    {"cli"},
    {"__main__"},
]


def package_imports(path: Path) -> Set[str]:
    """The lokt_tasks modules that the module at ``path`` imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            if node.module:
                found.add(node.module.split(".")[0])
            else:
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lokt_tasks"):
            parts = node.module.split(".")
            found.update(parts[1:2] or [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "lokt_tasks" and len(parts) > 1:
                    found.add(parts[1])
    return found


def upward_imports(imports: Dict[str, Set[str]], layers: List[Set[str]]) -> List[Tuple[str, str]]:
    """Every (importer, imported) pair whose arrow does not point down."""
    layer_of = {module: index for index, layer in enumerate(layers) for module in layer}
    return sorted(
        (module, target)
        for module, targets in imports.items()
        for target in targets
        if layer_of[target] >= layer_of[module]
    )


def real_imports() -> Dict[str, Set[str]]:
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    # NOTE: ``from . import __version__`` names a value, not a module.
    return {path.stem: package_imports(path) & modules for path in PACKAGE.glob("*.py")}


def test_every_module_has_a_layer():
    placed = set().union(*LAYERS)
    assert set(real_imports()) == placed


def test_every_import_points_down():
    assert upward_imports(real_imports(), LAYERS) == []


def test_the_check_finds_an_upward_import_and_a_cycle():
    imports = real_imports()
    imports["results"] = imports["results"] | {"verdict"}
    imports["engine"] = imports["engine"] | {"embedded"}
    assert upward_imports(imports, LAYERS) == [("engine", "embedded"), ("results", "verdict")]


def test_the_architecture_doc_lists_each_module_in_its_layer():
    text = ARCHITECTURE.read_text(encoding="utf-8")
    rows = dict(re.findall(r"^\| `(\w+)\.py` \| (\d+) \|", text, re.MULTILINE))
    expected = {
        module: str(index)
        for index, layer in enumerate(LAYERS)
        for module in layer
        if module != "__init__"
    }
    assert rows == expected
