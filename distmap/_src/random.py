"""Random NamedArrays: ``jax.random`` sampling with axes instead of shapes.

Each function draws exactly what ``jax.random`` draws for the same key and the
shape ``tuple(a.size for a in axes)``, so results match plain JAX bit for bit.
Keys may be typed (``jax.random.key``) or raw ``uint32`` (``jax.random.PRNGKey``).
Parameters such as ``minval`` or ``p`` may be NamedArrays whose axes are among
the sampled axes; they are broadcast by name.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from distmap import errors
from distmap._src.axis import Axis, AxisSelector, SizedAxes, to_axes
from distmap._src.named import NamedArray, align, scalar_operand, wrap
from distmap._src.operands import check_subset, single_axis
from distmap._src.partitioning import auto_sharded


def _check_key(key: Any, fn: str) -> Any:
    if isinstance(key, NamedArray) or not hasattr(key, "dtype") or not hasattr(key, "shape"):
        hint = " (an int seed goes through jax.random.key(seed) first)" if isinstance(key, int) else ""
        raise errors.ArgumentTypeError(
            f"{fn}: key must be a PRNG key from jax.random.key or jax.random.PRNGKey, got {type(key).__name__}{hint}."
        )
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        if tuple(key.shape) != ():
            raise errors.ShapeMismatchError(
                f"{fn}: expected one key, got an array of keys of shape {tuple(key.shape)}; "
                "split it and pass one key per call (or map by name with distmap.vmap)."
            )
    elif key.dtype != jnp.uint32:
        raise errors.ArgumentTypeError(
            f"{fn}: key must be a PRNG key from jax.random.key (or a raw uint32 key from jax.random.PRNGKey), got "
            f"an array of dtype {key.dtype} and shape {tuple(key.shape)}."
        )
    elif len(key.shape) != 1:
        raise errors.ShapeMismatchError(
            f"{fn}: expected one key (a typed key, or a raw uint32 key of shape (2,)), got dtype {key.dtype} and "
            f"shape {tuple(key.shape)}."
        )
    return key


def _param(value: Any, axes: tuple[Axis, ...], fn: str, what: str) -> Any:
    if isinstance(value, NamedArray):
        return align(check_subset(value, axes, fn, what), axes)
    return scalar_operand(value, f"{fn}: {what}")


def _dtype(dtype: Any, kinds: Any, fn: str, what: str) -> Any:
    """``dtype`` checked against the kinds ``fn`` can sample (``jnp.floating``, ``jnp.integer``)."""
    try:
        d = jnp.dtype(dtype)
    except TypeError as e:
        raise errors.ArgumentTypeError(f"{fn}: dtype {dtype!r} is not a dtype ({e}).") from None
    if not any(jnp.issubdtype(d, k) for k in kinds):
        raise errors.ArgumentTypeError(f"{fn}: dtype must be {what}, got {d}.")
    return dtype


def _shape(axes: tuple[Axis, ...]) -> tuple[int, ...]:
    return tuple(a.size for a in axes)


def normal(key: Any, axes: SizedAxes, dtype: Any = jnp.float32) -> NamedArray:
    """Standard normal samples with the given axes.

    Example:
        >>> import distmap, jax
        >>> x = distmap.random.normal(jax.random.key(0), {"batch": 2, "feature": 3})
        >>> x.shape
        {'batch': 2, 'feature': 3}
        >>> bool((x.array == jax.random.normal(jax.random.key(0), (2, 3))).all())
        True
    """
    ax = to_axes(axes, what="normal(axes=...)")
    dtype = _dtype(dtype, (jnp.floating, jnp.complexfloating), "normal", "a float or complex dtype")
    return auto_sharded(wrap(jax.random.normal(_check_key(key, "normal"), _shape(ax), dtype), ax))


def uniform(
    key: Any,
    axes: SizedAxes,
    dtype: Any = jnp.float32,
    minval: NamedArray | float = 0.0,
    maxval: NamedArray | float = 1.0,
) -> NamedArray:
    """Uniform samples in ``[minval, maxval)`` with the given axes.

    Example:
        >>> import distmap, jax
        >>> lo = distmap.named(jax.numpy.array([0.0, 10.0]), "batch")
        >>> x = distmap.random.uniform(jax.random.key(0), {"batch": 2, "feature": 3}, minval=lo, maxval=lo + 1)
        >>> x["batch", 1].array.min() >= 10
        Array(True, dtype=bool)
    """
    ax = to_axes(axes, what="uniform(axes=...)")
    dtype = _dtype(dtype, (jnp.floating,), "uniform", "a float dtype")
    lo = _param(minval, ax, "uniform", "minval")
    hi = _param(maxval, ax, "uniform", "maxval")
    return auto_sharded(wrap(jax.random.uniform(_check_key(key, "uniform"), _shape(ax), dtype, lo, hi), ax))


def randint(
    key: Any,
    axes: SizedAxes,
    minval: NamedArray | int,
    maxval: NamedArray | int,
    dtype: Any = jnp.int32,
) -> NamedArray:
    """Integers in ``[minval, maxval)`` with the given axes.

    Example:
        >>> import distmap, jax
        >>> x = distmap.random.randint(jax.random.key(0), {"batch": 4}, 0, 10)
        >>> x.dtype, bool(((x.array >= 0) & (x.array < 10)).all())
        (dtype('int32'), True)
    """
    ax = to_axes(axes, what="randint(axes=...)")
    dtype = _dtype(dtype, (jnp.integer,), "randint", "an integer dtype")
    lo = _param(minval, ax, "randint", "minval")
    hi = _param(maxval, ax, "randint", "maxval")
    return auto_sharded(wrap(jax.random.randint(_check_key(key, "randint"), _shape(ax), lo, hi, dtype), ax))


def bernoulli(key: Any, axes: SizedAxes, p: NamedArray | float = 0.5) -> NamedArray:
    """Booleans that are ``True`` with probability ``p`` (a scalar or a NamedArray).

    Example:
        >>> import distmap, jax
        >>> distmap.random.bernoulli(jax.random.key(0), {"batch": 3}, p=1.0).array.tolist()
        [True, True, True]
    """
    ax = to_axes(axes, what="bernoulli(axes=...)")
    prob = _param(p, ax, "bernoulli", "p")
    return auto_sharded(wrap(jax.random.bernoulli(_check_key(key, "bernoulli"), prob, _shape(ax)), ax))


def categorical(key: Any, logits: NamedArray, axis: AxisSelector) -> NamedArray:
    """Sample an index along ``axis`` from unnormalised log-probabilities; ``axis`` is dropped.

    Example:
        >>> import distmap, jax, jax.numpy as jnp
        >>> logits = distmap.named(jnp.array([[0.0, -1e9], [-1e9, 0.0]]), ("batch", "vocab"))
        >>> distmap.random.categorical(jax.random.key(0), logits, "vocab").array.tolist()
        [0, 1]
    """
    if not isinstance(logits, NamedArray):
        raise errors.ArgumentTypeError(
            f"categorical: logits must be a NamedArray, got {type(logits).__name__}; name its axes with distmap.named."
        )
    i = logits.axis_indices(single_axis(axis, "categorical"))
    rest = logits.axes[:i] + logits.axes[i + 1 :]
    return auto_sharded(wrap(jax.random.categorical(_check_key(key, "categorical"), logits.array, axis=i), rest))


__all__ = ["normal", "uniform", "randint", "bernoulli", "categorical"]
