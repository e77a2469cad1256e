"""NamedArray methods whose functions live elsewhere, attached from outside (as JAX attaches ``jax.Array``'s).

``named.py`` holds the array core and does not import the modules that build on it;
this module, imported by ``distmap/__init__.py``, gives NamedArray ``.take`` from ``ops.take``.

Example:
    >>> import distmap
    >>> distmap.arange({"vocab": 5}).take("vocab", 3).item()
    3
"""

from __future__ import annotations

from typing import Any

from distmap._src import ops
from distmap._src.axis import AxisSelector
from distmap._src.named import NamedArray


def _take(self: NamedArray, axis: AxisSelector, index: Any) -> NamedArray:
    """``distmap.take(self, axis, index)``: entries along one axis (an int drops it; a NamedArray index puts its axes there)."""
    return ops.take(self, axis, index)


_take.__name__ = _take.__qualname__ = "take"
NamedArray.take = _take  # type: ignore[attr-defined]
