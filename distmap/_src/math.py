"""Elementwise math on NamedArrays, and softmax over named axes.

The unary functions keep the axes of their input. They also take a plain scalar
or a 0-d array, giving a NamedArray with no axes. Binary ones (``maximum``,
``minimum``, ``clip``) broadcast by name, like the arithmetic operators.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from distmap import errors
from distmap._src.axis import AxisSelection
from distmap._src.named import NamedArray, wrap, binary_op
from distmap._src.operands import as_named, axis_dims, broadcast_operands, check_named


def _apply(jfn: Callable[..., Any], x: Any, fn: str, **kwargs: Any) -> NamedArray:
    x = as_named(x, fn)
    return wrap(jfn(x.array, **kwargs), x.axes)


def _unary(jfn: Callable[[Any], Any], name: str, summary: str, example_in: str, example_out: str):
    def fn(x: NamedArray | Any) -> NamedArray:
        return _apply(jfn, x, name)

    fn.__name__ = fn.__qualname__ = name
    fn.__module__ = __name__
    fn.__doc__ = (
        f"{summary}, elementwise; the axes are kept.\n\n"
        "    Example:\n"
        "        >>> import distmap, jax.numpy as jnp\n"
        f"        >>> x = distmap.named(jnp.array({example_in}), 'batch')\n"
        f"        >>> distmap.{name}(x).array.tolist()\n"
        f"        {example_out}\n"
    )
    return fn


# name, jax function, summary, example input, its output (as .tolist() prints it)
_UNARY = [
    ("exp", jnp.exp, "``e ** x``", "[0.0]", "[1.0]"),
    ("log", jnp.log, "The natural logarithm", "[1.0]", "[0.0]"),
    ("log1p", jnp.log1p, "``log(1 + x)``, accurate near zero", "[0.0]", "[0.0]"),
    ("expm1", jnp.expm1, "``exp(x) - 1``, accurate near zero", "[0.0]", "[0.0]"),
    ("sqrt", jnp.sqrt, "The square root", "[4.0, 9.0]", "[2.0, 3.0]"),
    ("rsqrt", jax.lax.rsqrt, "``1 / sqrt(x)``", "[4.0]", "[0.5]"),
    ("square", jnp.square, "``x * x``", "[-3.0]", "[9.0]"),
    ("abs", jnp.abs, "The absolute value", "[-1.5, 2.0]", "[1.5, 2.0]"),
    ("sign", jnp.sign, "-1, 0 or 1 by the sign of ``x``", "[-2.0, 0.0, 3.0]", "[-1.0, 0.0, 1.0]"),
    ("negative", jnp.negative, "``-x``", "[1.0]", "[-1.0]"),
    ("reciprocal", jnp.reciprocal, "``1 / x``", "[4.0]", "[0.25]"),
    ("floor", jnp.floor, "Round down", "[1.5, -1.5]", "[1.0, -2.0]"),
    ("ceil", jnp.ceil, "Round up", "[1.5, -1.5]", "[2.0, -1.0]"),
    ("sin", jnp.sin, "The sine", "[0.0]", "[0.0]"),
    ("cos", jnp.cos, "The cosine", "[0.0]", "[1.0]"),
    ("tanh", jnp.tanh, "The hyperbolic tangent", "[0.0]", "[0.0]"),
    ("sigmoid", jax.nn.sigmoid, "The logistic sigmoid ``1 / (1 + exp(-x))``", "[0.0]", "[0.5]"),
    ("relu", jax.nn.relu, "``max(x, 0)``", "[-1.0, 2.0]", "[0.0, 2.0]"),
    ("silu", jax.nn.silu, "``x * sigmoid(x)``", "[0.0]", "[0.0]"),
    ("softplus", jax.nn.softplus, "``log(1 + exp(x))``", "[-1000.0]", "[0.0]"),
    ("isnan", jnp.isnan, "Whether ``x`` is NaN", "[0.0, jnp.nan]", "[False, True]"),
    ("isfinite", jnp.isfinite, "Whether ``x`` is neither infinite nor NaN", "[1.0, jnp.inf]", "[True, False]"),
    ("logical_not", jnp.logical_not, "Boolean not", "[True, False]", "[False, True]"),
]

for _name, _jfn, _summary, _in, _out in _UNARY:
    globals()[_name] = _unary(_jfn, _name, _summary, _in, _out)
del _name, _jfn, _summary, _in, _out

# Spelled out for readers and type checkers; the loop above defined them.
exp: Callable[[Any], NamedArray]
log: Callable[[Any], NamedArray]
log1p: Callable[[Any], NamedArray]
expm1: Callable[[Any], NamedArray]
sqrt: Callable[[Any], NamedArray]
rsqrt: Callable[[Any], NamedArray]
square: Callable[[Any], NamedArray]
abs: Callable[[Any], NamedArray]
sign: Callable[[Any], NamedArray]
negative: Callable[[Any], NamedArray]
reciprocal: Callable[[Any], NamedArray]
floor: Callable[[Any], NamedArray]
ceil: Callable[[Any], NamedArray]
sin: Callable[[Any], NamedArray]
cos: Callable[[Any], NamedArray]
tanh: Callable[[Any], NamedArray]
sigmoid: Callable[[Any], NamedArray]
relu: Callable[[Any], NamedArray]
silu: Callable[[Any], NamedArray]
softplus: Callable[[Any], NamedArray]
isnan: Callable[[Any], NamedArray]
isfinite: Callable[[Any], NamedArray]
logical_not: Callable[[Any], NamedArray]


def round(x: NamedArray | Any, decimals: int = 0) -> NamedArray:
    """Round to ``decimals`` decimal places (halves to even), elementwise.

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> distmap.round(distmap.named(jnp.array([0.5, 1.5, 2.5]), "batch")).array.tolist()
        [0.0, 2.0, 2.0]
    """
    return _apply(jnp.round, x, "round", decimals=decimals)


def gelu(x: NamedArray | Any, approximate: bool = True) -> NamedArray:
    """The GELU activation, elementwise; ``approximate`` picks the tanh form (JAX's default).

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> distmap.gelu(distmap.named(jnp.array([0.0]), "batch"), approximate=False).array.tolist()
        [0.0]
    """
    return _apply(jax.nn.gelu, x, "gelu", approximate=approximate)


def _binary_math(op: Callable[[Any, Any], Any], a: Any, b: Any, fn: str) -> NamedArray:
    if not isinstance(a, NamedArray) and not isinstance(b, NamedArray):
        a = as_named(a, fn, "the first argument")
    return binary_op(op, a, b, fn)


def equal(a: NamedArray | Any, b: NamedArray | Any) -> NamedArray:
    """``a == b`` elementwise, broadcasting by name (as the ``==`` operator does).

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> distmap.equal(distmap.named(jnp.array([1, 2]), "batch"), 2).array.tolist()
        [False, True]
    """
    return _binary_math(jnp.equal, a, b, "equal")


def maximum(a: NamedArray | Any, b: NamedArray | Any) -> NamedArray:
    """The larger of ``a`` and ``b``, elementwise, broadcasting by name (NaN if either is NaN).

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> x = distmap.named(jnp.array([-1.0, 2.0]), "batch")
        >>> distmap.maximum(x, 0.0).array.tolist()
        [0.0, 2.0]
    """
    return _binary_math(jnp.maximum, a, b, "maximum")


def minimum(a: NamedArray | Any, b: NamedArray | Any) -> NamedArray:
    """The smaller of ``a`` and ``b``, elementwise, broadcasting by name (NaN if either is NaN).

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> x = distmap.named(jnp.array([-1.0, 2.0]), "batch")
        >>> distmap.minimum(x, 0.0).array.tolist()
        [-1.0, 0.0]
    """
    return _binary_math(jnp.minimum, a, b, "minimum")


def clip(x: NamedArray | Any, lo: NamedArray | Any = None, hi: NamedArray | Any = None) -> NamedArray:
    """``x`` limited to ``[lo, hi]``; the bounds are scalars, NamedArrays or ``None`` (no bound).

    The three broadcast by name: the result's axes are the union of theirs, ``x``'s first.

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> x = distmap.named(jnp.array([-2.0, 0.5, 3.0]), "batch")
        >>> distmap.clip(x, 0.0, 1.0).array.tolist()
        [0.0, 0.5, 1.0]
    """
    axes, (a, l, h) = broadcast_operands((("x", x), ("lo", lo), ("hi", hi)), "clip", allow_none=True)
    if a is None:
        raise errors.ArgumentTypeError("clip: x must be a NamedArray or a scalar, got None.")
    return wrap(jnp.clip(a, l, h), axes)


def softmax(x: NamedArray, axis: AxisSelection | None) -> NamedArray:
    """Softmax over the named ``axis`` (a selector or selection; ``None`` for all axes).

    Example:
        >>> import distmap
        >>> p = distmap.softmax(distmap.zeros({"batch": 2, "vocab": 4}), "vocab")
        >>> p.array.tolist()
        [[0.25, 0.25, 0.25, 0.25], [0.25, 0.25, 0.25, 0.25]]
    """
    x = check_named(x, "softmax")
    return wrap(jax.nn.softmax(x.array, axis=axis_dims(x, axis, "softmax")), x.axes)


def log_softmax(x: NamedArray, axis: AxisSelection | None) -> NamedArray:
    """Log-softmax over the named ``axis`` (a selector or selection; ``None`` for all axes).

    Example:
        >>> import distmap
        >>> distmap.exp(distmap.log_softmax(distmap.zeros({"vocab": 2}), "vocab")).array.tolist()
        [0.5, 0.5]
    """
    x = check_named(x, "log_softmax")
    return wrap(jax.nn.log_softmax(x.array, axis=axis_dims(x, axis, "log_softmax")), x.axes)


__all__ = [name for name, *_ in _UNARY] + [
    "round", "gelu", "maximum", "minimum", "clip", "softmax", "log_softmax",
]
