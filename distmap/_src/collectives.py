"""Named collectives: reduce, gather and index over a mapped axis by its name.

Inside ``distmap.vmap(fn, "batch")``, ``psum(x, "batch")`` sums ``x`` over every
element of the map. On one device that is a ``jax.lax.psum`` over the vmap axis; on a
mesh it combines the vmap axis with the mesh axes behind it, and ignores the padding
of an uneven split. Code written for one device needs no change.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distmap import errors
from distmap._src.map import frames
from distmap._src.axis import Axis, AxisSelector, axis_name
from distmap._src.named import NamedArray, _wrap, as_jax_array

AxisNames = AxisSelector | Sequence[AxisSelector]


def _names(axis: AxisNames, fn: str) -> tuple[str, ...]:
    if isinstance(axis, (str, Axis)):
        return (axis_name(axis),)
    try:
        names = tuple(axis_name(a) for a in axis)
    except TypeError:
        raise errors.AxisSelectorError(f"{fn}: expected an axis name or a sequence of them, got {axis!r}.") from None
    if not names:
        raise errors.AxisSelectorError(f"{fn}: no axis name given.")
    if len(set(names)) != len(names):
        raise errors.DuplicateAxisError(f"{fn}: axis names {names} repeat.")
    return names


def _frames(axis: AxisNames, fn: str) -> list[frames.MapFrame]:
    out = []
    for name in _names(axis, fn):
        frame = frames.find_frame(name)
        if frame is None:
            active = tuple(f.name for f in frames.current_frames())
            raise errors.MappingError(
                f"{fn}({name!r}) is only meaningful inside distmap.vmap over {name!r}; "
                f"the maps active here are {active if active else 'none'}."
            )
        if frame.chunked:
            raise errors.MappingError(
                f"{fn}({name!r}): the map over {name!r} runs in chunks (chunk_size=...), so a collective "
                "would only see one chunk; drop chunk_size or move the collective outside the map."
            )
        out.append(frame)
    return out


def _jax_names(fs: list[frames.MapFrame]) -> tuple[str, ...]:
    out: list[str] = []
    for f in fs:
        out.extend(f.jax_axis_names)
    return tuple(out)


def _flat_index(fs: list[frames.MapFrame]) -> tuple[jax.Array, jax.Array]:
    """(index over the named axes combined, whether this element is real rather than padding)."""
    index = jnp.zeros((), jnp.int32)
    valid = jnp.ones((), bool)
    for f in fs:
        i = _global_index(f)
        index = index * f.size + i
        valid = valid & (i < f.size)
    return index, valid


def _global_index(f: frames.MapFrame) -> jax.Array:
    local = jax.lax.axis_index(f.vmap_name)
    if not f.mesh_axes:
        return local
    shard = jax.lax.axis_index(f.mesh_axes)
    return shard * f.local_size + local


def _array(leaf: Any, fn: str) -> jax.Array:
    """A pytree leaf given to a collective, as an array (numbers and arrays only)."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype") and not isinstance(leaf, np.ndarray):
        return leaf  # a jax array or tracer
    return as_jax_array(leaf, fn)


def _map_leaves(fn, x: Any, name: str = "collective") -> Any:
    def one(leaf):
        if isinstance(leaf, NamedArray):
            return _wrap(fn(leaf.array), leaf.axes)
        return fn(_array(leaf, name))

    return jax.tree_util.tree_map(one, x, is_leaf=lambda v: isinstance(v, NamedArray))


def _masked(fs, values, fill, name: str = "collective"):
    if not any(f.padded for f in fs):
        return values
    _, valid = _flat_index(fs)
    return _map_leaves(lambda a: jnp.where(valid, a, jnp.asarray(fill(a.dtype), a.dtype)), values, name)


def _explicit_typed(a: jax.Array) -> bool:
    """Whether ``a``'s type carries a sharding on a mesh with Explicit axes (traced under ``jax.set_mesh``).

    Under ``jax.vmap``, JAX 0.12's psum/pmax/pmin batching rule keeps the whole batch's sharding
    on each element's type and fails ("Length of sharding.spec ... must be equal to aval's
    ndim"); ``all_gather`` has no such trouble, so such operands reduce over the vmap axis by a
    gather and a local reduction (the same values), and over mesh axes as usual.
    """
    sharding = getattr(jax.typeof(a), "sharding", None)
    mesh = getattr(sharding, "mesh", None)
    explicit = jax.sharding.AxisType.Explicit
    return mesh is not None and any(t == explicit for t in getattr(mesh, "axis_types", ()))


def _reduce(a: jax.Array, fs: list[frames.MapFrame], how: str) -> jax.Array:
    """``a`` reduced (``how``: "sum", "max" or "min") over every element of the maps ``fs``."""
    names = _jax_names(fs)
    lax_op = {"sum": jax.lax.psum, "max": jax.lax.pmax, "min": jax.lax.pmin}[how]
    if not _explicit_typed(a):
        if how == "sum":
            return lax_op(a, names)
        return _extreme_of(a, names, how == "max")
    local = getattr(jnp, how)
    for f in fs:
        a = local(jax.lax.all_gather(a, f.vmap_name, axis=0), axis=0).astype(a.dtype)
    mesh_axes = tuple(n for f in fs for n in f.mesh_axes)
    if not mesh_axes:
        return a
    return lax_op(a, mesh_axes) if how == "sum" else _extreme_of(a, mesh_axes, how == "max")


def psum(x: Any, axis: AxisNames) -> Any:
    """Sum ``x`` (a NamedArray, array or pytree of them) over every element of the named map(s).

    Example:
        >>> import distmap
        >>> B = distmap.Axis("batch", 4)
        >>> distmap.vmap(lambda v: distmap.psum(v, "batch"), B)(distmap.arange(B)).array
        Array([6, 6, 6, 6], dtype=int32)
    """
    fs = _frames(axis, "psum")
    return _map_leaves(lambda a: _reduce(a, fs, "sum"), _masked(fs, x, lambda d: 0, "psum"), "psum")


def pmean(x: Any, axis: AxisNames) -> Any:
    """Mean of ``x`` over every (real) element of the named map(s)."""
    fs = _frames(axis, "pmean")
    count = int(np.prod([f.size for f in fs]))
    total = _map_leaves(lambda a: _reduce(a, fs, "sum"), _masked(fs, x, lambda d: 0, "pmean"), "pmean")
    return _map_leaves(lambda a: a / count, total)


def _extreme(dtype: Any, high: bool) -> Any:
    if jnp.issubdtype(dtype, jnp.floating):
        return jnp.inf if high else -jnp.inf
    if jnp.issubdtype(dtype, jnp.bool_):
        return high
    info = jnp.iinfo(dtype)
    return info.max if high else info.min


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _pextreme(x: jax.Array, names: tuple[str, ...], high: bool) -> jax.Array:
    return jax.lax.pmax(x, names) if high else jax.lax.pmin(x, names)


@_pextreme.defjvp
def _pextreme_jvp(names, high, primals, tangents):
    # jax.lax.pmax has no derivative; like jnp.max, share the tangent among the elements that tie.
    (x,), (t,) = primals, tangents
    out = _pextreme(x, names, high)
    hit = (x == out).astype(t.dtype)
    return out, jax.lax.psum(t * hit, names) / jax.lax.psum(hit, names)


def _extreme_of(a: jax.Array, names: tuple[str, ...], high: bool) -> jax.Array:
    if jnp.issubdtype(a.dtype, jnp.inexact):
        return _pextreme(a, names, high)
    return jax.lax.pmax(a, names) if high else jax.lax.pmin(a, names)


def pmax(x: Any, axis: AxisNames) -> Any:
    """Maximum of ``x`` over every element of the named map(s); differentiable (ties share the gradient)."""
    fs = _frames(axis, "pmax")
    return _map_leaves(
        lambda a: _reduce(a, fs, "max"), _masked(fs, x, lambda d: _extreme(d, False), "pmax"), "pmax"
    )


def pmin(x: Any, axis: AxisNames) -> Any:
    """Minimum of ``x`` over every element of the named map(s); differentiable (ties share the gradient)."""
    fs = _frames(axis, "pmin")
    return _map_leaves(
        lambda a: _reduce(a, fs, "min"), _masked(fs, x, lambda d: _extreme(d, True), "pmin"), "pmin"
    )


def axis_index(axis: AxisNames) -> jax.Array:
    """This element's index along the named mapped axis (the true global index on a mesh).

    For several names, the index into their flattened product, the first name major
    (as ``jax.lax.axis_index`` does for a tuple of names).

    Example:
        >>> import distmap
        >>> B = distmap.Axis("batch", 3)
        >>> distmap.vmap(lambda: distmap.axis_index("batch"), B)().tolist()
        [0, 1, 2]
    """
    fs = _frames(axis, "axis_index")
    if len(fs) == 1:
        return _global_index(fs[0])
    return _flat_index(fs)[0]


def axis_size(axis: AxisNames) -> int:
    """The true size of the named mapped axis (the product, for several names)."""
    return int(np.prod([f.size for f in _frames(axis, "axis_size")]))


def all_gather(x: Any, axis: AxisNames) -> Any:
    """Gather ``x`` from every element of the map over ``axis``: NamedArrays get the axis back, at the front.

    Unnamed arrays get it at dim 0. Padding of an uneven mesh split is dropped, so the
    gathered axis always has the true size. For several names, the gathered axes come
    first in the order given.

    Example:
        >>> import distmap
        >>> B = distmap.Axis("batch", 3)
        >>> g = distmap.vmap(lambda v: distmap.all_gather(v, "batch").sum(), B)(distmap.arange(B))
        >>> g.array.tolist()
        [3, 3, 3]
    """
    fs = _frames(axis, "all_gather")

    def gather(a: jax.Array, f: frames.MapFrame) -> jax.Array:
        out = a
        # innermost first: the vmap axis, then each mesh axis from the innermost out
        out = jax.lax.all_gather(out, f.vmap_name, axis=0, tiled=False)
        for mesh_axis in reversed(f.mesh_axes):
            out = jax.lax.all_gather(out, mesh_axis, axis=0, tiled=True)
        if f.padded:
            out = out[: f.size]
        return out

    def one(leaf):
        if isinstance(leaf, NamedArray):
            for f in fs:
                if any(ax.name == f.name for ax in leaf.axes):
                    raise errors.MappingError(
                        f"all_gather over {f.name!r}: the array already has an axis named {f.name!r} "
                        f"({leaf.axis_names})."
                    )
            out = leaf.array
            for f in reversed(fs):  # the last name gathered first, so the first ends up in front
                out = gather(out, f)
            return _wrap(out, tuple(Axis(f.name, f.size) for f in fs) + leaf.axes)
        out = _array(leaf, "all_gather")
        for f in reversed(fs):
            out = gather(out, f)
        return out

    return jax.tree_util.tree_map(one, x, is_leaf=lambda v: isinstance(v, NamedArray))
