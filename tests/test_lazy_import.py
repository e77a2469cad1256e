"""``import distmap`` imports no JAX; launchers and the launch layer never do; public names load on use.

Each check of what a process imports runs in a fresh interpreter: this one has JAX already.
"""

from __future__ import annotations

import ast
import glob
import importlib
import json
import os
import subprocess
import sys

import pytest

import distmap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCHERS = sorted(glob.glob(os.path.join(ROOT, "launch", "*.py")))
# What a launcher never needs: JAX (a second, and never a backend in the launcher), and what
# only the array code uses.
HEAVY = ("jax", "jaxlib", "numpy", "equinox")


def _heavy(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def _run(*args: str, cwd: str = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def _run_code(code: str) -> dict:
    """Run ``code`` in a fresh interpreter in the checkout; it prints one JSON object last."""
    proc = _run("-c", code)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


def test_import_distmap_imports_no_jax():
    out = _run_code(
        "import distmap, json, sys\n"
        "names = dir(distmap)\n"
        "print(json.dumps({'modules': list(sys.modules), 'file': distmap.__file__, 'dir': names}))"
    )
    assert _heavy(out["modules"]) == []
    assert out["file"] == os.path.join(ROOT, "distmap", "__init__.py")
    assert set(distmap.__all__) <= set(out["dir"])  # dir lists every public name before any is loaded


def test_launch_layer_imports_no_jax():
    """Every module of the launch layer, the flags modules and errors, all in one process."""
    out = _run_code(
        "import importlib, json, pkgutil, sys\n"
        "import distmap._src.launch as launch\n"
        "names = [m.name for m in pkgutil.walk_packages(launch.__path__, prefix='distmap._src.launch.')]\n"
        "for name in names + ['distmap._src.flags', 'distmap.flags', 'distmap.errors']:\n"
        "    importlib.import_module(name)\n"
        "print(json.dumps({'modules': list(sys.modules), 'names': names}))"
    )
    assert "distmap._src.launch.agent" in out["names"] and "distmap._src.launch.supervisor" in out["names"]
    assert _heavy(out["modules"]) == []


@pytest.mark.parametrize("launcher", LAUNCHERS, ids=os.path.basename)
def test_launcher_help_imports_no_jax(launcher):
    """``python launch/X.py --help`` as a user types it; ``-X importtime`` lists every module it imports."""
    proc = _run("-X", "importtime", launcher, "--help")
    lines = proc.stderr.splitlines()
    imported = [line.rsplit("|", 1)[1].strip() for line in lines if line.startswith("import time:")]
    printed = proc.stdout + "\n".join(line for line in lines if not line.startswith("import time:"))
    assert "Traceback" not in printed and ("--helpfull" in printed or "--plan" in printed), printed  # help printed
    assert "distmap._src.launch.cli" in imported or "distmap._src.launch.agent" in imported
    assert _heavy(imported) == []


def test_launcher_uses_its_checkout(tmp_path):
    """A launcher run as a script from elsewhere imports the distmap of the checkout it is in."""
    launcher = os.path.join(ROOT, "launch", "local.py")
    code = (
        "import json, os, runpy, sys\n"
        f"sys.argv = [{launcher!r}, '--help']\n"
        f"sys.path[0] = {os.path.dirname(launcher)!r}  # what python sets for a script\n"
        "try:\n"
        "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps({'file': sys.modules['distmap'].__file__}))"
    )
    proc = _run("-c", code, cwd=str(tmp_path))
    assert json.loads(proc.stdout.splitlines()[-1])["file"] == os.path.join(ROOT, "distmap", "__init__.py")


def test_names_work_after_a_lazy_import():
    """In a fresh process: vmap and friends, NamedArray's methods and its pytree registration."""
    out = _run_code(
        "import json, sys\n"
        "import distmap\n"
        "assert 'jax' not in sys.modules\n"
        "from distmap import NamedArray\n"
        "methods = all(hasattr(NamedArray, m) for m in ('sum', 'mean', 'argmax', 'take'))\n"
        "import jax\n"
        "leaves = len(jax.tree_util.tree_leaves(distmap.zeros({'batch': 3})))\n"
        "Batch = distmap.Axis('batch', 4)\n"
        "y = distmap.vmap(lambda x: x * 2, Batch)(distmap.arange(Batch))\n"
        "print(json.dumps({'methods': methods, 'leaves': leaves, 'y': y.array.tolist(),"
        " 'sum': int(y.sum('batch').array), 'random': distmap.random.normal(jax.random.key(0), {'b': 2}).shape,"
        " 'mode': distmap.distributed.initialize().mode}))"
    )
    assert out == {"methods": True, "leaves": 1, "y": [0, 2, 4, 6], "sum": 12, "random": {"b": 2}, "mode": "single"}


def test_named_array_methods_come_with_any_module_that_makes_one():
    """The methods are attached by the module that defines NamedArray, whoever imports it first."""
    out = _run_code(
        "import json\n"
        "from distmap._src.ops import zeros\n"
        "x = zeros({'batch': 2})\n"
        "print(json.dumps({'sum': float(x.sum('batch').array), 'take': x.take('batch', 0).shape}))"
    )
    assert out == {"sum": 0.0, "take": {}}


def _type_checking_imports() -> dict[str, str]:
    """``{name: module}`` of the ``if TYPE_CHECKING:`` block of ``distmap/__init__.py``."""
    with open(distmap.__file__) as f:
        tree = ast.parse(f.read())
    blocks = [n for n in tree.body if isinstance(n, ast.If) and ast.unparse(n.test) == "_typing.TYPE_CHECKING"]
    assert len(blocks) == 1
    found: dict[str, str] = {}
    for node in blocks[0].body:
        assert isinstance(node, ast.ImportFrom) and node.module, ast.unparse(node)
        for alias in node.names:
            assert alias.asname is None and alias.name not in found, alias.name
            found[alias.name] = node.module
    return found


def test_lazy_table_type_checking_block_and_all_agree():
    table = distmap._EXPORTS
    assert len(distmap.__all__) == len(set(distmap.__all__))
    assert set(distmap.__all__) == set(table) | {"__version__"}
    assert _type_checking_imports() == table
    for name, module in table.items():
        value = getattr(distmap, name)
        if module == "distmap":
            assert value is importlib.import_module(f"distmap.{name}"), name
        else:
            assert value is getattr(importlib.import_module(module), name), name


def test_star_import_gives_every_name():
    namespace: dict = {}
    exec("from distmap import *", namespace)
    assert set(distmap.__all__) <= set(namespace)
    assert namespace["vmap"] is distmap.vmap and namespace["random"] is distmap.random


def test_unknown_attribute_raises_attribute_error_naming_it():
    with pytest.raises(AttributeError, match="module 'distmap' has no attribute 'no_such_name'"):
        distmap.no_such_name  # noqa: B018
    assert not hasattr(distmap, "_src_no_such")
    with pytest.raises(ImportError, match="no_such_name"):
        exec("from distmap import no_such_name", {})
