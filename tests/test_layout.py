"""The rooms of samkit (ARCHITECTURE.md): imports point down, no cycles, the trainer only where it is used."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "samkit"

# Rooms from the top down; a module may import its own room and the rooms below it.
ROOMS = ("widgets", "analysis", "train", "methods", "models", "datasets", "pieces")
SEAM = ("samkit.predictor", "samkit.cache")  # the seam's predictor and embedding cache sit with the models

# The imports up the rooms, and why: `python -m samkit.models.tinysam train` (and text_tinysam's) runs the trainer from a
# function of the command-line entry point, so importing samkit.models never loads samkit.train.
ALLOWED_UP = {("samkit.models.tinysam", "samkit.train"), ("samkit.models.text_tinysam", "samkit.train")}


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


MODULES = module_names()


def room(module: str) -> str:
    parts = module.split(".")
    if module in SEAM:
        return "models"
    if len(parts) > 1 and parts[1] in ROOMS:
        return parts[1]
    return "pieces"


def samkit_imports(path: Path, top_level_only: bool) -> set[str]:
    """The samkit modules `path` imports (`from samkit import x` counts as samkit.x when x is a module)."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "samkit"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "samkit":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in MODULES else node.module)
    return found


def test_imports_point_down_the_rooms():
    wrong = []
    for module, path in sorted(MODULES.items()):
        if module == "samkit":  # the package facade re-exports from the models room
            continue
        for imported in samkit_imports(path, top_level_only=False):
            if (imported != "samkit" and ROOMS.index(room(imported)) < ROOMS.index(room(module))
                    and (module, imported) not in ALLOWED_UP):
                wrong.append(f"{module} ({room(module)}) imports {imported} ({room(imported)})")
    assert not wrong, "imports up the rooms:\n" + "\n".join(wrong)


def test_no_import_cycles_at_import_time():
    graph = {module: samkit_imports(path, top_level_only=True) & set(MODULES) for module, path in MODULES.items()}
    state: dict[str, str] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph[module]):
            parent = imported.rpartition(".")[0]
            if imported == module or module.startswith(imported + ".") or parent == module:
                continue  # a package and its own submodules
            if state.get(imported) == "open":
                pytest.fail("import cycle: " + " -> ".join(trail + [module, imported]))
            if imported not in state:
                visit(imported, trail + [module])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


# Run in a fresh interpreter that has imported torch & co. but no samkit; each module is imported in a
# forked child of it, so what a child loads is what importing that one module pulls in.
PROBE = """
import importlib, json, multiprocessing, sys
import numpy, pandas, scipy.optimize, segment_anything, torch, torchvision  # shared by every child

def loaded_after_import(module):
    importlib.import_module(module)
    return sorted(name for name in sys.modules if name.split(".")[0] in ("samkit", "tools"))

names = json.loads(sys.argv[1])  # not pkgutil.walk_packages: it imports the packages it walks
with multiprocessing.get_context("fork").Pool(2, maxtasksperchild=1) as pool:
    print(json.dumps(dict(zip(names, pool.map(loaded_after_import, names, chunksize=1)))))
"""


def test_each_module_alone_loads_the_trainer_only_if_it_is_the_trainer():
    names = sorted(name for name in MODULES if not name.endswith("__main__"))
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(names)], capture_output=True, text=True,
                            cwd=PACKAGE.parent, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    loaded = json.loads(result.stdout)
    assert set(loaded) >= {"samkit.train", "samkit.models.base", "samkit.methods.cpc"}
    assert "samkit.train.loop" in loaded["samkit.train"]  # the probe sees what it looks for
    wrong = [f"{name} loads {[m for m in mods if m.startswith('samkit.train')]}" for name, mods in loaded.items()
             if not name.startswith("samkit.train") and any(m.startswith("samkit.train") for m in mods)]
    assert not wrong, "\n".join(wrong)
    for name, mods in loaded.items():
        assert not any(m.split(".")[0] == "tools" for m in mods), f"{name} imports the development tools"
        if not name.startswith(("samkit.widgets", "samkit.analysis")):
            upper = [m for m in mods if m.startswith(("samkit.widgets", "samkit.analysis"))]
            assert not upper, f"{name} loads {upper}"
