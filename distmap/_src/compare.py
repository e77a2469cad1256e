"""Comparisons by name: ``isclose``, ``allclose``, ``array_equal``.

Operands line up by axis name, as the operators do, so ``x`` and its transpose compare equal.

Example:
    >>> import distmap, jax.numpy as jnp
    >>> x = distmap.named(jnp.array([[1.0, 2.0], [3.0, 4.0]]), ("a", "b"))
    >>> bool(distmap.allclose(x, x.rearrange(("b", "a")) + 1e-9))
    True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from distmap._src.named import NamedArray, binary_op


def isclose(a: Any, b: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> NamedArray:
    """Elementwise ``|a - b| <= atol + rtol * |b|``, broadcasting by name (``jnp.isclose``'s rule).

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> x = distmap.named(jnp.array([1.0, 2.0]), "b")
        >>> distmap.isclose(x, distmap.named(jnp.array([1.0, 2.001]), "b")).array.tolist()
        [True, False]
    """
    return binary_op(lambda x, y: jnp.isclose(x, y, rtol=rtol, atol=atol, equal_nan=equal_nan), a, b, "isclose")


def allclose(a: Any, b: Any, rtol: float = 1e-05, atol: float = 1e-08, equal_nan: bool = False) -> jax.Array:
    """Whether :func:`isclose` holds everywhere: a 0-d bool array (``bool(...)`` it outside ``jit``).

    Axes that differ in size raise ``AxisSizeError``, as for any elementwise operation.
    """
    return jnp.all(isclose(a, b, rtol=rtol, atol=atol, equal_nan=equal_nan).array)


def array_equal(a: Any, b: Any) -> jax.Array | bool:
    """Whether ``a`` and ``b`` have the same axes (by name and size, in any order) and equal values.

    Unlike :func:`allclose` it does not broadcast: different axes give ``False``, as
    ``numpy.array_equal`` does for different shapes.

    Example:
        >>> import distmap
        >>> x = distmap.arange({"a": 3})
        >>> bool(distmap.array_equal(x, x)), bool(distmap.array_equal(x, distmap.arange({"b": 3})))
        (True, False)
    """
    if isinstance(a, NamedArray) and isinstance(b, NamedArray):
        if sorted(a.axes) != sorted(b.axes):
            return False
        return jnp.all(binary_op(jnp.equal, a, b, "array_equal").array)
    if isinstance(a, NamedArray) or isinstance(b, NamedArray):
        return False
    return jnp.array_equal(a, b)
