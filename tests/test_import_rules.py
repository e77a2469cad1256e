"""The import rules of the package, checked on its source: what one module may take from another.

A name that starts with an underscore belongs to its module. A helper that several modules need
gets a name without one in a single module (``named.wrap``, ``operands.check_named``,
``mesh.entry_axes`` ...), and the others import that name.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SOURCES = sorted([*ROOT.joinpath("distmap").rglob("*.py"), *ROOT.joinpath("launch").rglob("*.py")])


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _crossings(path: pathlib.Path, root: pathlib.Path = ROOT) -> list[str]:
    """``from distmap... import _x`` and ``module._x`` reads of another distmap module, in one file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    modules: dict[str, str] = {}  # local name -> distmap module it stands for
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("distmap"):
            for alias in node.names:
                if _private(alias.name):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: from {node.module} import {alias.name}")
                modules[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("distmap"):
                    modules[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id in modules):
            found.append(f"{path.relative_to(root)}:{node.lineno}: {modules[node.value.id]}.{node.attr}")
    return found


def test_sources_found():
    names = {p.relative_to(ROOT).as_posix() for p in SOURCES}
    assert "distmap/_src/named.py" in names and "distmap/_src/operands.py" in names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_reads_another_modules_private_names(path):
    assert _crossings(path) == []


def test_the_check_sees_a_crossing(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from distmap._src.named import _secret\nfrom distmap._src import mesh as m\nm._hidden\n")
    assert [line.split(": ", 1)[1] for line in _crossings(bad, tmp_path)] == [
        "from distmap._src.named import _secret", "distmap._src.mesh._hidden"]

