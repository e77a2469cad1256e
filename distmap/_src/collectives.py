"""Named collectives: reduce, gather, index and move data over a mapped axis by its name.

Inside ``distmap.vmap(fn, "batch")``, ``psum(x, "batch")`` sums ``x`` over every
element of the map. On one device that is a collective over the vmap axis; on a mesh it
combines the vmap axis with the mesh axes behind it, and leaves out the padding of an
uneven split. Each collective is written once, over both parts
(:mod:`distmap._src.map.two_level`), so code written for one device needs no change and
gives the same values, dtypes and errors on a mesh.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from distmap import errors
from distmap._src.axis import Axis, AxisSelector, axis_name
from distmap._src.map import frames, two_level
from distmap._src.named import NamedArray, as_jax_array, is_named_array, wrap

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


def _frames(axis: AxisNames, fn: str) -> tuple[frames.MapFrame, ...]:
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
    return tuple(out)


def _one_frame(axis: AxisNames, fn: str) -> frames.MapFrame:
    fs = _frames(axis, fn)
    if len(fs) != 1:
        raise errors.AxisSelectorError(
            f"{fn}: takes one mapped axis, got {tuple(f.name for f in fs)}; call it once per axis."
        )
    return fs[0]


def _array(leaf: Any, fn: str) -> jax.Array:
    """A pytree leaf given to a collective, as an array (numbers and arrays only)."""
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype") and not isinstance(leaf, np.ndarray):
        return leaf  # a jax array or tracer
    return as_jax_array(leaf, fn)


def _map_leaves(op: Callable[[jax.Array], jax.Array], x: Any, fn: str) -> Any:
    """``op`` on the array of every leaf of ``x``; NamedArrays keep their axes."""

    def one(leaf: Any) -> Any:
        if isinstance(leaf, NamedArray):
            return wrap(op(leaf.array), leaf.axes)
        return op(_array(leaf, fn))

    return jax.tree_util.tree_map(one, x, is_leaf=is_named_array)


def psum(x: Any, axis: AxisNames) -> Any:
    """Sum ``x`` (a NamedArray, array or pytree of them) over every element of the named map(s).

    Dtypes follow ``jax.lax.psum``: a bool counts as ``int32``.

    Example:
        >>> import distmap
        >>> B = distmap.Axis("batch", 4)
        >>> distmap.vmap(lambda v: distmap.psum(v, "batch"), B)(distmap.arange(B)).array
        Array([6, 6, 6, 6], dtype=int32)
    """
    fs = _frames(axis, "psum")
    return _map_leaves(lambda a: two_level.reduce_sum(a, fs), x, "psum")


def pmean(x: Any, axis: AxisNames) -> Any:
    """Mean of ``x`` over every (real) element of the named map(s), as ``jax.lax.pmean`` (an int or bool mean is a float)."""
    fs = _frames(axis, "pmean")
    count = int(np.prod([f.size for f in fs]))
    return _map_leaves(lambda a: two_level.reduce_sum(a, fs) / count, x, "pmean")


def pmax(x: Any, axis: AxisNames) -> Any:
    """Maximum of ``x`` over every element of the named map(s).

    A NaN anywhere gives NaN, on one device and on a mesh alike. Differentiable for
    floats: elements that tie for the maximum share the gradient, as with ``jnp.max``.

    Example:
        >>> import distmap
        >>> B = distmap.Axis("batch", 3)
        >>> distmap.vmap(lambda v: distmap.pmax(v, "batch"), B)(distmap.arange(B)).array.tolist()
        [2, 2, 2]
    """
    fs = _frames(axis, "pmax")
    return _map_leaves(lambda a: two_level.reduce_extreme(a, fs, True), x, "pmax")


def pmin(x: Any, axis: AxisNames) -> Any:
    """Minimum of ``x`` over every element of the named map(s); NaN wins, ties share the gradient (see :func:`pmax`)."""
    fs = _frames(axis, "pmin")
    return _map_leaves(lambda a: two_level.reduce_extreme(a, fs, False), x, "pmin")


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
    return two_level.index(_frames(axis, "axis_index"))[0]


def axis_size(axis: AxisNames) -> int:
    """The true size of the named mapped axis (the product, for several names)."""
    return int(np.prod([f.size for f in _frames(axis, "axis_size")]))


def _check_new_axis(leaf: NamedArray, names: Sequence[str], fn: str) -> None:
    for name in names:
        if leaf.has_axis(name):
            raise errors.MappingError(f"{fn} over {name!r}: the array already has an axis named {name!r} ({leaf.axis_names}).")


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

    def gathered(a: jax.Array) -> jax.Array:
        for f in reversed(fs):  # the last name gathered first, so the first ends up in front
            a = two_level.gather(a, f)
        return a

    def one(leaf: Any) -> Any:
        if isinstance(leaf, NamedArray):
            _check_new_axis(leaf, [f.name for f in fs], "all_gather")
            return wrap(gathered(leaf.array), tuple(Axis(f.name, f.size) for f in fs) + leaf.axes)
        return gathered(_array(leaf, "all_gather"))

    return jax.tree_util.tree_map(one, x, is_leaf=is_named_array)


def ppermute(x: Any, axis: AxisNames, perm: Sequence[tuple[int, int]]) -> Any:
    """Send ``x`` from element ``src`` to element ``dst`` of the map, for each pair ``(src, dst)`` in ``perm``.

    As ``jax.lax.ppermute``: indices are global (the flat index for several names, the first
    major), each element sends and receives at most once, and an element nothing is sent to
    gets zeros. A rotation by one is ``[(i, (i + 1) % n) for i in range(n)]``. On a mesh each
    distinct shard offset among the pairs costs one collective-permute of a device's block.

    Example:
        >>> import distmap
        >>> B = distmap.Axis("batch", 4)
        >>> rot = [(i, (i + 1) % 4) for i in range(4)]
        >>> distmap.vmap(lambda v: distmap.ppermute(v, "batch", rot), B)(distmap.arange(B)).array.tolist()
        [3, 0, 1, 2]
    """
    fs = _frames(axis, "ppermute")
    pairs = _check_perm(perm, int(np.prod([f.size for f in fs])), tuple(f.name for f in fs))
    return _map_leaves(lambda a: two_level.permute(a, fs, pairs), x, "ppermute")


def _check_perm(perm: Any, n: int, names: tuple[str, ...]) -> tuple[tuple[int, int], ...]:
    what = f"ppermute over {names[0]!r}" if len(names) == 1 else f"ppermute over {names}"
    try:
        pairs = tuple((int(s), int(d)) for s, d in perm)
        bad_type = any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) for p in perm for v in p)
    except (TypeError, ValueError):
        raise errors.MappingError(f"{what}: perm must be a sequence of (source, destination) int pairs, got {perm!r}.") from None
    if bad_type:
        raise errors.MappingError(f"{what}: perm must hold int indices, got {perm!r}.")
    for s, d in pairs:
        if not (0 <= s < n and 0 <= d < n):
            raise errors.AxisIndexError(f"{what}: pair ({s}, {d}) is out of range for an axis of size {n}.")
    for k, which in ((0, "source"), (1, "destination")):
        seen = [p[k] for p in pairs]
        dup = sorted({v for v in seen if seen.count(v) > 1})
        if dup:
            raise errors.MappingError(
                f"{what}: {which} {dup[0]} appears more than once in perm; each element sends and receives at most once."
            )
    return pairs


def _dim_of(leaf: Any, selector: Any, fn: str, arg: str) -> int:
    """The dimension of ``leaf`` that ``selector`` names: an axis name for a NamedArray, an int otherwise."""
    if isinstance(leaf, NamedArray):
        if not isinstance(selector, (str, Axis)):
            raise errors.AxisSelectorError(
                f"{fn}: {arg} must name an axis of the NamedArray (axes {leaf.axis_names}), got {selector!r}."
            )
        try:
            return leaf.axis_indices(selector)
        except errors.AxisNotFoundError as e:
            raise errors.AxisNotFoundError(f"{fn}: {arg}={selector!r}: {e}") from None
    if isinstance(selector, bool) or not isinstance(selector, (int, np.integer)):
        raise errors.AxisSelectorError(f"{fn}: {arg} must be an int dimension for an unnamed array, got {selector!r}.")
    ndim = np.ndim(leaf)
    if not -ndim <= selector < ndim:
        raise errors.AxisSelectorError(f"{fn}: {arg}={selector} is out of range for an array of rank {ndim}.")
    return int(selector) % ndim


def _split_dim(leaf: Any, selector: Any, f: frames.MapFrame, tiled: bool, fn: str, arg: str) -> int:
    """The dimension of ``leaf`` that ``selector`` names, checked to split into one piece per element of ``f``."""
    d = _dim_of(leaf, selector, fn, arg)
    if isinstance(leaf, NamedArray):
        what, size = f"axis {leaf.axes[d].name!r}", leaf.axes[d].size
    else:
        what, size = f"dimension {d}", leaf.shape[d]
    _check_divides(size, f.size, tiled, fn, what, f.name)
    return d


def _check_divides(size: int, n: int, tiled: bool, fn: str, what: str, name: str) -> None:
    if (size != n) if not tiled else (size % n):
        need = f"a multiple of {n}" if tiled else f"exactly {n}"
        raise errors.AxisSizeError(
            f"{fn} over {name!r}: {what} has size {size}, but {'tiled' if tiled else 'untiled'} it must have size "
            f"{need} (the size of {name!r})" + ("" if tiled else "; pass tiled=True to split it into equal pieces") + "."
        )


def psum_scatter(x: Any, axis: AxisSelector, *, scatter_axis: Any = None, scatter_dimension: int = 0, tiled: bool = False) -> Any:
    """Sum ``x`` over the map and give element ``i`` only its piece ``i`` of one axis, as ``jax.lax.psum_scatter``.

    For a NamedArray, ``scatter_axis`` names the axis that is scattered: of the mapped axis's
    size ``n`` (it is then removed), or with ``tiled=True`` of a multiple of ``n`` (it keeps its
    name, ``n`` times shorter). Unnamed arrays use ``scatter_dimension``. The communication is
    one reduce-scatter, as in a hand-written ``shard_map``.

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> B, F = distmap.Axis("batch", 2), distmap.Axis("feature", 2)
        >>> x = distmap.named(jnp.arange(4).reshape(2, 2), (B, F))  # [[0, 1], [2, 3]]
        >>> distmap.vmap(lambda r: distmap.psum_scatter(r, "batch", scatter_axis="feature"), B)(x).array.tolist()
        [2, 4]
    """
    f = _one_frame(axis, "psum_scatter")

    def one(leaf: Any) -> Any:
        if isinstance(leaf, NamedArray):
            d = _split_dim(leaf, scatter_axis, f, tiled, "psum_scatter", "scatter_axis")
            ax = leaf.axes[d]
            out = two_level.scatter_sum(leaf.array, f, d, tiled)
            axes = list(leaf.axes)
            if tiled:
                axes[d] = Axis(ax.name, ax.size // f.size)
            else:
                del axes[d]
            return wrap(out, tuple(axes))
        a = _array(leaf, "psum_scatter")
        d = _split_dim(a, scatter_dimension, f, tiled, "psum_scatter", "scatter_dimension")
        return two_level.scatter_sum(a, f, d, tiled)

    return jax.tree_util.tree_map(one, x, is_leaf=is_named_array)


def all_to_all(x: Any, axis: AxisSelector, split_axis: Any, concat_axis: Any, *, tiled: bool = False) -> Any:
    """Element ``i`` sends piece ``j`` of ``split_axis`` to element ``j``, which stacks what it receives by source.

    As ``jax.lax.all_to_all``. For a NamedArray, ``split_axis`` names an axis of the mapped axis's
    size ``n``: untiled, it is removed and the received pieces form a new axis ``concat_axis`` (a
    name or an ``Axis``, of size ``n``, indexed by source) in its place; with ``tiled=True``,
    ``split_axis`` has a multiple of ``n`` and becomes ``n`` times shorter while ``concat_axis``, an
    axis of the array, becomes ``n`` times longer (pieces in source order). Unnamed arrays take
    ``jax.lax``'s int dimensions. One all-to-all on a mesh, as in a hand-written ``shard_map``.

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> B = distmap.Axis("batch", 2)
        >>> x = distmap.named(jnp.arange(4).reshape(2, 2), ("batch", "dest"))  # element i holds [2i, 2i+1]
        >>> y = distmap.vmap(lambda r: distmap.all_to_all(r, "batch", "dest", "src"), B)(x)
        >>> y.axis_names, y.array.tolist()
        (('batch', 'src'), [[0, 2], [1, 3]])
    """
    f = _one_frame(axis, "all_to_all")

    def one(leaf: Any) -> Any:
        if isinstance(leaf, NamedArray):
            d = _split_dim(leaf, split_axis, f, tiled, "all_to_all", "split_axis")
            ax = leaf.axes[d]
            axes = list(leaf.axes)
            if tiled:
                c = _dim_of(leaf, concat_axis, "all_to_all", "concat_axis")
                out = two_level.all_to_all(leaf.array, f, d, c, True)
                axes[d] = Axis(ax.name, ax.size // f.size)
                axes[c] = Axis(axes[c].name, axes[c].size * f.size)
                return wrap(out, tuple(axes))
            if not isinstance(concat_axis, (str, Axis)):
                raise errors.AxisSelectorError(
                    f"all_to_all over {f.name!r}: untiled, concat_axis is the name of the new axis of sources, "
                    f"got {concat_axis!r}."
                )
            new = axis_name(concat_axis)
            if isinstance(concat_axis, Axis) and concat_axis.size != f.size:
                raise errors.AxisSizeError(
                    f"all_to_all over {f.name!r}: concat_axis {concat_axis} must have size {f.size} (one per source)."
                )
            del axes[d]
            if new == f.name or any(a.name == new for a in axes):
                raise errors.DuplicateAxisError(f"all_to_all over {f.name!r}: the new axis {new!r} is already taken.")
            out = two_level.all_to_all(leaf.array, f, d, d, False)
            axes.insert(d, Axis(new, f.size))
            return wrap(out, tuple(axes))
        a = _array(leaf, "all_to_all")
        d = _split_dim(a, split_axis, f, tiled, "all_to_all", "split_axis")
        c = _dim_of(a, concat_axis, "all_to_all", "concat_axis")  # the result has the operand's rank
        return two_level.all_to_all(a, f, d, c, tiled)

    return jax.tree_util.tree_map(one, x, is_leaf=is_named_array)
