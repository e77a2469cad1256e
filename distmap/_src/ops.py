"""Constructors and shape operations on named axes."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp

from distmap._src.axis import Axis, AxisSelector, AxisSpec, to_axes
from distmap._src.named import NamedArray, _wrap


def zeros(axes: AxisSpec, dtype: Any = None) -> NamedArray:
    """An array of zeros with the given axes.

    Example:
        >>> import distmap
        >>> distmap.zeros({"batch": 2, "feature": 3}).shape
        {'batch': 2, 'feature': 3}
    """
    ax = to_axes(axes, what="zeros(axes=...)")
    return _wrap(jnp.zeros(tuple(a.size for a in ax), dtype), ax)


def ones(axes: AxisSpec, dtype: Any = None) -> NamedArray:
    """An array of ones with the given axes."""
    ax = to_axes(axes, what="ones(axes=...)")
    return _wrap(jnp.ones(tuple(a.size for a in ax), dtype), ax)


def full(axes: AxisSpec, fill_value: Any, dtype: Any = None) -> NamedArray:
    """An array filled with ``fill_value``, with the given axes."""
    ax = to_axes(axes, what="full(axes=...)")
    return _wrap(jnp.full(tuple(a.size for a in ax), fill_value, dtype), ax)


def arange(axis: Axis, *, start: int = 0, step: int = 1, dtype: Any = None) -> NamedArray:
    """``start, start + step, ...`` along one axis, ``axis.size`` values.

    Example:
        >>> import distmap
        >>> distmap.arange(distmap.Axis("batch", 4)).array
        Array([0, 1, 2, 3], dtype=int32)
    """
    (ax,) = to_axes(axis, what="arange(axis=...)")
    return _wrap(jnp.arange(start, start + step * ax.size, step, dtype=dtype)[: ax.size], (ax,))
