"""Every docstring example in the distmap package runs and prints what it says."""

import doctest
import importlib
import inspect
import pkgutil

import pytest

import distmap

MODULES = sorted(
    {"distmap"} | {m.name for m in pkgutil.walk_packages(distmap.__path__, prefix="distmap.")}
)


@pytest.mark.parametrize("module_name", MODULES)
def test_doctests(module_name):
    module = importlib.import_module(module_name)
    result = doctest.testmod(
        module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, report=True, verbose=False
    )
    assert result.failed == 0, f"{result.failed} doctest example(s) failed in {module_name} (details above)"


def test_found_modules():
    assert "distmap._src.ops" in MODULES and "distmap.random" in MODULES


# Modules whose every public function must show a runnable example.
EXAMPLE_MODULES = ["distmap._src.ops", "distmap._src.linalg", "distmap._src.math", "distmap._src.random",
                   "distmap._src.reductions"]


@pytest.mark.parametrize("module_name", EXAMPLE_MODULES)
def test_public_functions_have_examples(module_name):
    module = importlib.import_module(module_name)
    missing = []
    for name, fn in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module_name:
            continue
        if ">>> " not in (fn.__doc__ or ""):
            missing.append(name)
    assert not missing, f"{module_name}: public functions without a docstring example: {missing}"
