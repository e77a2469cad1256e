"""NamedArray's methods that are functions of the library: attached here, from outside.

The array core (:mod:`distmap._src.named`) knows nothing of reductions; as JAX attaches
``jax.Array``'s methods in ``jax/_src/numpy/array_methods.py``, this module gives
``NamedArray`` its ``.sum()``, ``.mean()``, ... by delegating to the functions of the same
name. :mod:`distmap._src.named` imports it as its last line, so every NamedArray has them.

Example:
    >>> import distmap
    >>> distmap.ones({"batch": 2, "feature": 3}).sum("feature").array.tolist()
    [3.0, 3.0]
"""

from __future__ import annotations

from typing import Any

from distmap._src import ops, reductions
from distmap._src.axis import AxisSelection, AxisSelector
from distmap._src.named import NamedArray


def sum(self, axis: AxisSelection | None = None, *, where: NamedArray | None = None) -> NamedArray:
    return reductions.sum(self, axis, where=where)

def mean(self, axis: AxisSelection | None = None, *, where: NamedArray | None = None) -> NamedArray:
    return reductions.mean(self, axis, where=where)

def max(self, axis: AxisSelection | None = None, *, where: NamedArray | None = None) -> NamedArray:
    return reductions.max(self, axis, where=where)

def min(self, axis: AxisSelection | None = None, *, where: NamedArray | None = None) -> NamedArray:
    return reductions.min(self, axis, where=where)

def prod(self, axis: AxisSelection | None = None, *, where: NamedArray | None = None) -> NamedArray:
    return reductions.prod(self, axis, where=where)

def std(self, axis: AxisSelection | None = None, *, ddof: int = 0, where: NamedArray | None = None) -> NamedArray:
    return reductions.std(self, axis, ddof=ddof, where=where)

def var(self, axis: AxisSelection | None = None, *, ddof: int = 0, where: NamedArray | None = None) -> NamedArray:
    return reductions.var(self, axis, ddof=ddof, where=where)

def any(self, axis: AxisSelection | None = None, *, where: NamedArray | None = None) -> NamedArray:
    return reductions.any(self, axis, where=where)

def all(self, axis: AxisSelection | None = None, *, where: NamedArray | None = None) -> NamedArray:
    return reductions.all(self, axis, where=where)

def logsumexp(self, axis: AxisSelection | None = None) -> NamedArray:
    return reductions.logsumexp(self, axis)

def argmax(self, axis: AxisSelector | None = None) -> NamedArray:
    return reductions.argmax(self, axis)

def argmin(self, axis: AxisSelector | None = None) -> NamedArray:
    return reductions.argmin(self, axis)

def take(self, axis: AxisSelector, index: Any) -> NamedArray:
    return ops.take(self, axis, index)

_METHODS = (sum, mean, max, min, prod, std, var, any, all, logsumexp, argmax, argmin, take)


def _attach() -> None:
    for method in _METHODS:
        method.__qualname__ = f"NamedArray.{method.__name__}"
        method.__doc__ = f"Method form of :func:`distmap.{method.__name__}`: ``x.{method.__name__}(axis)``."
        setattr(NamedArray, method.__name__, method)


_attach()
