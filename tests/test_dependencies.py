"""pyproject.toml declares every import under samkit/ and tools/, and requires only what samkit imports.

Imports are read with `ast` (module level and inside functions alike), mapped to their
distributions with `importlib.metadata.packages_distributions()`, and looked up in
`[project] dependencies` and `[project.optional-dependencies]`.
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import tomllib
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"samkit", "tools"}
# The library sits below the development tools: it must not import them, nor what only they need.
NOT_IN_LIBRARY = {"tools": "development tools are not part of the library",
                  "playwright": "a browser driver for tools/ and the tests",
                  "psutil": "process clean-up for tools/labbrowser.py"}
# Required distributions that no samkit module imports by name, each with the reason it is required.
REQUIRED_WITHOUT_IMPORT: dict[str, str] = {
    # sam2 imports them (its builders and checkpoint I/O), and its source distribution, which the
    # Makefile installs with --no-deps, does not bring them.
    "hydra-core": "sam2's config system",
    "iopath": "sam2's file I/O",
}
# Import name -> distribution, for modules that are not installed here (packages_distributions()
# knows only installed ones); any other module is looked up under its own name.
NOT_INSTALLED_FALLBACK = {"PIL": "pillow", "skimage": "scikit-image", "sklearn": "scikit-learn", "yaml": "pyyaml"}


def normalise(name: str) -> str:
    """A distribution name per PEP 503: lower case, each run of -, _ and . one dash."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(spec: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", spec)
    assert match, f"pyproject.toml: cannot read a distribution name from {spec!r}"
    return normalise(match.group(1))


@cache
def declared() -> dict[str, frozenset[str]]:
    """{"required" or an extra's name: the normalised distribution names it lists}."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    groups = {"required": project["dependencies"], **project.get("optional-dependencies", {})}
    return {group: frozenset(requirement_name(spec) for spec in specs) for group, specs in groups.items()}


@cache
def imports() -> tuple[tuple[str, int, str], ...]:
    """(file relative to the repository, line, top-level module) of every absolute import."""
    found = []
    for folder in ("samkit", "tools"):
        for path in sorted((REPO / folder).rglob("*.py")):
            where = path.relative_to(REPO).as_posix()
            for node in ast.walk(ast.parse(path.read_text(), filename=where)):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:  # relative imports are first-party
                    continue
                found += [(where, node.lineno, module.partition(".")[0]) for module in modules]
    return tuple(found)


def third_party_imports() -> list[tuple[str, int, str]]:
    return [(where, line, module) for where, line, module in imports()
            if module not in sys.stdlib_module_names and module not in FIRST_PARTY]


@cache
def _installed() -> dict[str, list[str]]:
    return importlib.metadata.packages_distributions()


def distributions_of(module: str) -> frozenset[str]:
    names = _installed().get(module) or [NOT_INSTALLED_FALLBACK.get(module, module)]
    return frozenset(normalise(name) for name in names)


def test_the_modules_are_found():
    files = {where for where, _, _ in imports()}
    assert "samkit/__init__.py" in files and "tools/labbrowser.py" in files, sorted(files)[:5]


def test_every_import_is_declared():
    everywhere = frozenset().union(*declared().values())
    undeclared = [f"{where}:{line} imports {module} (distribution {' or '.join(sorted(distributions_of(module)))}), "
                  "which pyproject.toml declares nowhere"
                  for where, line, module in third_party_imports() if not distributions_of(module) & everywhere]
    assert not undeclared, "\n".join(undeclared)


def test_the_library_imports_no_development_tool():
    groups = declared()
    dev_only = groups["dev"] - groups["required"] - groups["lab"] - groups["full"] - {"samkit"}
    wrong = []
    for where, line, module in imports():
        if where.startswith("samkit/") and module in NOT_IN_LIBRARY:
            wrong.append(f"{where}:{line} imports {module}: {NOT_IN_LIBRARY[module]}")
    for where, line, module in third_party_imports():
        if where.startswith("samkit/") and module not in NOT_IN_LIBRARY and distributions_of(module) & dev_only:
            wrong.append(f"{where}:{line} imports {module}, which only the [dev] extra declares")
    assert not wrong, "\n".join(wrong)


def test_every_required_dependency_is_imported_by_the_library():
    used = {}
    for where, line, module in third_party_imports():
        if where.startswith("samkit/"):
            for distribution in distributions_of(module):
                used.setdefault(distribution, f"{where}:{line}")
    unused = sorted(declared()["required"] - used.keys() - REQUIRED_WITHOUT_IMPORT.keys())
    assert not unused, (f"pyproject.toml requires {', '.join(unused)}, which no module under samkit/ imports: "
                        "move it to an extra, or list it in REQUIRED_WITHOUT_IMPORT with the reason")


def test_extras():
    groups = declared()
    assert {"lab", "full", "dev"} <= groups.keys(), sorted(groups)
    assert "samkit" in groups["dev"], "the [dev] extra should pull in samkit[lab,full]"
