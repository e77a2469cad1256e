"""Reductions over named axes: ``sum(x, "batch")``, ``mean(x)``, ``argmax(x, "feature")`` ...

``axis=None`` reduces every axis (the result has no axes); otherwise ``axis`` is a
selector or a selection and the result keeps the other axes in their order.
``where=`` takes a NamedArray mask, broadcast by name; with a mask, ``max`` and
``min`` give the dtype's lowest (highest) value, ``-inf`` (``inf``) for floats, where
every entry is masked out, unless ``initial=`` says otherwise.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from distmap import errors
from distmap._src.axis import Axis, AxisSelection, AxisSelector
from distmap._src.named import NamedArray, wrap, align
from distmap._src.operands import axis_dims, check_named






def _where(x: NamedArray, where: NamedArray | None, fn: str) -> jax.Array | None:
    if where is None:
        return None
    if not isinstance(where, NamedArray):
        raise errors.ArgumentTypeError(
            f"{fn}(where=...): expected a NamedArray mask of bools, got {type(where).__name__}; name its axes "
            "with distmap.named."
        )
    if not jnp.issubdtype(where.dtype, jnp.bool_):
        raise errors.ArgumentTypeError(
            f"{fn}(where=...): the mask must hold bools, got dtype {where.dtype}; compare first, e.g. where=m > 0."
        )
    return jnp.broadcast_to(align(where, x.axes, f"{fn}(where=...): the mask"), x.array.shape)


def _extreme(dtype: Any, lowest: bool) -> Any:
    """The identity of max (``lowest``) or min for ``dtype``: what a fully masked slice gives."""
    if jnp.issubdtype(dtype, jnp.bool_):
        return not lowest
    if jnp.issubdtype(dtype, jnp.integer):
        info = jnp.iinfo(dtype)
        return info.min if lowest else info.max
    return -jnp.inf if lowest else jnp.inf


def _check_keywords(kw: dict[str, Any], allowed: tuple[str, ...], fn: str) -> None:
    """Refuse keywords the reduction does not take: passed on to jnp they could change the result's
    shape behind the axes' back (``keepdims``, ``return_sign``) or write elsewhere (``out``)."""
    for k in kw:
        if k not in allowed:
            hint = ""
            if k == "keepdims":
                hint = (
                    " The reduced axis is dropped by name; to combine the result with the input, just use it: "
                    "operators broadcast by name (x - x.mean('batch'))."
                )
            raise errors.ArgumentTypeError(
                f"{fn}: unknown keyword {k!r}; {fn} takes axis{''.join(', ' + a + '=' for a in allowed)}.{hint}"
            )


def _reduce_unnamed(jfn: Callable[..., jax.Array], name: str, x: Any, axis: Any, fixed: dict, kw: dict) -> jax.Array:
    """An unnamed array reduced as ``jax.numpy`` would (Haliax's rule): ``axis`` is None or positions, the result unnamed."""
    if not (hasattr(x, "shape") and hasattr(x, "dtype")) and not isinstance(x, (int, float, complex, bool)):
        raise errors.ArgumentTypeError(
            f"{name}: expected a NamedArray or an unnamed array, got {type(x).__name__}; give an array names with "
            "distmap.named."
        )
    dims = (axis,) if isinstance(axis, int) and not isinstance(axis, bool) else axis
    positions = isinstance(dims, tuple) and builtins.all(isinstance(d, int) and not isinstance(d, bool) for d in dims)
    if dims is not None and not positions:  # (builtins: this module's own `all` is the reduction)
        raise errors.ArgumentTypeError(
            f"{name}: {axis!r} names an axis, but the array is unnamed (shape {tuple(jnp.shape(x))}); reduce it with "
            f"axis=None or positions, or name its axes with distmap.named."
        )
    if isinstance(kw.get("where"), NamedArray):
        raise errors.ArgumentTypeError(f"{name}(where=...): a NamedArray mask cannot line up with an unnamed array.")
    return jfn(x, axis=axis, **fixed, **{k: v for k, v in kw.items() if v is not None})


def _reducer(
    jfn: Callable[..., jax.Array],
    name: str,
    *,
    takes_where: bool = True,
    lowest: bool | None = None,
    keywords: tuple[str, ...] = (),
    **fixed: Any,
):
    allowed = (("where",) if takes_where else ()) + keywords

    def reduce(x: NamedArray, axis: AxisSelection | None = None, **kw: Any) -> NamedArray:
        _check_keywords(kw, allowed, name)
        if not isinstance(x, NamedArray):
            return _reduce_unnamed(jfn, name, x, axis, fixed, kw)
        dims = axis_dims(x, axis, name)
        if takes_where:
            kw["where"] = _where(x, kw.get("where"), name)
            # max and min have no identity, so jnp asks for ``initial`` with a mask; supply the dtype's extreme.
            if lowest is not None and kw["where"] is not None and kw.get("initial") is None:
                kw["initial"] = _extreme(x.dtype, lowest)
        kept = tuple(a for i, a in enumerate(x.axes) if i not in dims)
        return wrap(jfn(x.array, axis=dims, **fixed, **kw), kept)

    reduce.__name__ = name
    reduce.__qualname__ = name
    reduce.__doc__ = (
        f"``{name}`` over the named ``axis`` (a selector or selection; ``None`` for all axes).\n\n"
        "    Example:\n"
        "        >>> import distmap\n"
        f"        >>> distmap.{name}(distmap.ones({{'batch': 2, 'feature': 3}}), 'feature').axis_names\n"
        "        ('batch',)\n"
    )
    return reduce


sum = _reducer(jnp.sum, "sum", keywords=("dtype",))
mean = _reducer(jnp.mean, "mean", keywords=("dtype",))
max = _reducer(jnp.max, "max", lowest=True, keywords=("initial",))
min = _reducer(jnp.min, "min", lowest=False, keywords=("initial",))
prod = _reducer(jnp.prod, "prod", keywords=("dtype",))
any = _reducer(jnp.any, "any")
all = _reducer(jnp.all, "all")
std = _reducer(jnp.std, "std", keywords=("ddof", "dtype"))
var = _reducer(jnp.var, "var", keywords=("ddof", "dtype"))
logsumexp = _reducer(jax.nn.logsumexp, "logsumexp", takes_where=False)


def _arg_reducer(jfn: Callable[..., jax.Array], name: str):
    def reduce(x: NamedArray, axis: AxisSelector | None = None) -> NamedArray:
        x = check_named(x, name)
        if axis is None:
            return wrap(jfn(x.array.reshape(-1)), ())
        if not isinstance(axis, (str, Axis)):
            raise errors.AxisSelectorError(
                f"{name}: axis must be one Axis or name (or None for the flattened index), got {axis!r}."
            )
        i = x.axis_indices(axis)
        return wrap(jfn(x.array, axis=i), tuple(a for j, a in enumerate(x.axes) if j != i))

    reduce.__name__ = name
    reduce.__qualname__ = name
    reduce.__doc__ = (
        f"The index of the {name[3:]} along one named axis (``None``: into the flattened array).\n\n"
        "    Example:\n"
        "        >>> import distmap, jax.numpy as jnp\n"
        f"        >>> distmap.{name}(distmap.named(jnp.array([[1, 5], [7, 2]]), ('a', 'b')), 'b').array.tolist()\n"
        f"        {[1, 0] if name == 'argmax' else [0, 1]}\n"
    )
    return reduce


argmax = _arg_reducer(jnp.argmax, "argmax")
argmin = _arg_reducer(jnp.argmin, "argmin")

__all__ = [
    "sum", "mean", "max", "min", "prod", "any", "all", "std", "var", "logsumexp", "argmax", "argmin",
]
