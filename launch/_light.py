"""Load distmap's launch code without importing JAX, for launcher processes.

``import distmap`` imports JAX (about a second on a small machine). A launcher needs only
``distmap._src.launch`` and ``distmap._src.flags``, which import absl alone, and must never
start a JAX backend. :func:`use_light_distmap` registers the ``distmap`` package without
running its ``__init__``, so those submodules load by themselves and the launcher starts its
ranks about a second sooner. Call it before anything imports distmap, in launchers only
(every launcher in ``launch/`` does, as its first import).
"""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def use_light_distmap(root: str = ROOT) -> None:
    """Make ``import distmap.<submodule>`` work in this process without ``distmap/__init__.py``."""
    if "distmap" in sys.modules:
        return
    spec = importlib.machinery.PathFinder.find_spec("distmap", [root]) or importlib.machinery.PathFinder.find_spec(
        "distmap"
    )
    if spec is None or not spec.submodule_search_locations:
        return  # distmap is not importable from here; the normal import will say so
    package = types.ModuleType("distmap", "distmap, loaded without its __init__ (launcher process)")
    package.__path__ = list(spec.submodule_search_locations)
    package.__spec__ = spec
    sys.modules["distmap"] = package
