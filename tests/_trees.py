"""Comparing the outputs of two maps leaf by leaf: same kinds, axes, shapes and values."""

from __future__ import annotations

import jax
import numpy as np

import distmap


def leaves(tree):
    return jax.tree_util.tree_leaves(tree, is_leaf=lambda x: isinstance(x, distmap.NamedArray))


def assert_same(a, b, *, rtol: float = 1e-6, atol: float = 0.0, equal_nan: bool = True) -> None:
    """``a`` and ``b`` have the same leaves: NamedArrays with equal axes, arrays of equal shape, close values."""
    la, lb = leaves(a), leaves(b)
    assert len(la) == len(lb)
    for x, y in zip(la, lb):
        assert type(x) is type(y)
        if isinstance(x, distmap.NamedArray):
            assert x.axes == y.axes
            x, y = x.array, y.array
        assert np.shape(x) == np.shape(y)
        assert x.dtype == y.dtype, (x.dtype, y.dtype)
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol, equal_nan=equal_nan)
