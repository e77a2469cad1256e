"""Constructors and shape operations on named axes.

Every function here takes axes by name (a ``str``) or by ``Axis`` and returns
NamedArrays. Where several arrays meet (``stack``, ``concatenate``, ``where``) their
axes are matched by name, never by position, so the same axes in a different
order are fine.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from distmap import errors
from distmap._src.axis import (
    Axis,
    AxisSelection,
    AxisSelector,
    SizedAxes,
    axis_name,
    parse_selection,
    to_axes,
)
from distmap._src.named import NamedArray, format_axes, wrap, align, check_dtype, scalar_operand
from distmap._src.operands import as_named, broadcast_operands, check_named, check_subset, single_axis


# --------------------------------------------------------------- constructors
def zeros(axes: SizedAxes, dtype: Any = None) -> NamedArray:
    """An array of zeros with the given axes.

    Example:
        >>> import distmap
        >>> distmap.zeros({"batch": 2, "feature": 3}).shape
        {'batch': 2, 'feature': 3}
    """
    ax = to_axes(axes, what="zeros(axes=...)")
    return wrap(jnp.zeros(tuple(a.size for a in ax), check_dtype(dtype, "zeros")), ax)


def ones(axes: SizedAxes, dtype: Any = None) -> NamedArray:
    """An array of ones with the given axes.

    Example:
        >>> import distmap
        >>> distmap.ones({"batch": 2}).array
        Array([1., 1.], dtype=float32)
    """
    ax = to_axes(axes, what="ones(axes=...)")
    return wrap(jnp.ones(tuple(a.size for a in ax), check_dtype(dtype, "ones")), ax)


def full(axes: SizedAxes, fill_value: Any, dtype: Any = None) -> NamedArray:
    """An array filled with ``fill_value``, with the given axes.

    ``fill_value`` is a scalar or a NamedArray whose axes are among ``axes`` (broadcast by name).

    Example:
        >>> import distmap
        >>> distmap.full({"batch": 2}, 7).array.tolist()
        [7, 7]
    """
    ax = to_axes(axes, what="full(axes=...)")
    if isinstance(fill_value, NamedArray):
        fill_value = align(check_subset(fill_value, ax, "full", "fill_value"), ax)
    else:
        fill_value = scalar_operand(fill_value, "full: fill_value")
    return wrap(jnp.full(tuple(a.size for a in ax), fill_value, check_dtype(dtype, "full")), ax)


def arange(axis: Axis, *, start: int = 0, step: int = 1, dtype: Any = None) -> NamedArray:
    """``start, start + step, ...`` along one axis, ``axis.size`` values.

    Example:
        >>> import distmap
        >>> distmap.arange(distmap.Axis("batch", 4)).array
        Array([0, 1, 2, 3], dtype=int32)
    """
    axes = to_axes(axis, what="arange(axis=...)")
    if len(axes) != 1:
        raise errors.AxisSelectorError(
            f"arange: expected one axis (an Axis or {{name: size}}), got {len(axes)}: {format_axes(axes)}; "
            "build one arange per axis and combine them by name."
        )
    (ax,) = axes
    return wrap(jnp.arange(start, start + step * ax.size, step, dtype=check_dtype(dtype, "arange"))[: ax.size], (ax,))


def zeros_like(x: NamedArray, dtype: Any = None) -> NamedArray:
    """Zeros with the axes (and, unless ``dtype`` is given, the dtype) of ``x``.

    Example:
        >>> import distmap
        >>> distmap.zeros_like(distmap.ones({"batch": 2}, dtype=int)).array
        Array([0, 0], dtype=int32)
    """
    x = check_named(x, "zeros_like")
    return wrap(jnp.zeros_like(x.array, dtype=check_dtype(dtype, "zeros_like")), x.axes)


def ones_like(x: NamedArray, dtype: Any = None) -> NamedArray:
    """Ones with the axes (and, unless ``dtype`` is given, the dtype) of ``x``.

    Example:
        >>> import distmap
        >>> distmap.ones_like(distmap.zeros({"batch": 2})).array
        Array([1., 1.], dtype=float32)
    """
    x = check_named(x, "ones_like")
    return wrap(jnp.ones_like(x.array, dtype=check_dtype(dtype, "ones_like")), x.axes)


def full_like(x: NamedArray, fill_value: Any, dtype: Any = None) -> NamedArray:
    """``fill_value`` everywhere, with the axes (and, unless ``dtype`` is given, the dtype) of ``x``.

    ``fill_value`` is a scalar or a NamedArray whose axes are among ``x``'s (it is
    broadcast by name).

    Example:
        >>> import distmap
        >>> distmap.full_like(distmap.zeros({"batch": 2}), 3).array
        Array([3., 3.], dtype=float32)
    """
    x = check_named(x, "full_like")
    if isinstance(fill_value, NamedArray):
        fill_value = align(check_subset(fill_value, x.axes, "full_like", "fill_value"), x.axes)
    else:
        fill_value = scalar_operand(fill_value, "full_like: fill_value")
    return wrap(jnp.full_like(x.array, fill_value, dtype=check_dtype(dtype, "full_like")), x.axes)


# ------------------------------------------------------- joining and cutting
def stack(axis: AxisSelector, arrays: Sequence[NamedArray]) -> NamedArray:
    """Stack arrays with the same axes along a new axis, placed first.

    The arrays' axes are matched by name (they may come in different orders; the
    result follows ``arrays[0]``). If ``axis`` is an ``Axis`` its size must equal
    ``len(arrays)``.

    Example:
        >>> import distmap
        >>> xs = [distmap.full({"feature": 2}, i) for i in range(3)]
        >>> y = distmap.stack("layer", xs)
        >>> y.shape
        {'layer': 3, 'feature': 2}
        >>> y.array.tolist()
        [[0, 0], [1, 1], [2, 2]]
    """
    name = axis_name(single_axis(axis, "stack"))
    arrays = _named_list(arrays, "stack")
    if isinstance(axis, Axis) and axis.size != len(arrays):
        raise errors.AxisSizeError(
            f"stack: axis {axis!r} has size {axis.size}, but {len(arrays)} arrays were given to stack along it."
        )
    first = arrays[0]
    if name in first.axis_names:
        raise errors.DuplicateAxisError(
            f"stack: the new axis {name!r} is already an axis of the arrays {first.axis_names}; pick another name."
        )
    parts = [_matching_array(first.axes, a, i, "stack") for i, a in enumerate(arrays)]
    return wrap(jnp.stack(parts, axis=0), (Axis(name, len(arrays)),) + first.axes)


def concatenate(axis: AxisSelector, arrays: Sequence[NamedArray]) -> NamedArray:
    """Join arrays end to end along an axis they all have; the result's size there is the sum.

    The other axes must be the same in every array (matched by name, in any order;
    the result follows ``arrays[0]``). If ``axis`` is an ``Axis`` its size must equal
    the summed size.

    Example:
        >>> import distmap
        >>> a = distmap.zeros({"batch": 2, "seq": 3})
        >>> b = distmap.ones({"seq": 1, "batch": 2})
        >>> distmap.concatenate("seq", [a, b]).shape
        {'batch': 2, 'seq': 4}
    """
    name = axis_name(single_axis(axis, "concatenate"))
    arrays = _named_list(arrays, "concatenate")
    for i, a in enumerate(arrays):
        if name not in a.axis_names:
            raise errors.AxisNotFoundError(
                f"concatenate: arrays[{i}] has no axis {name!r} to concatenate along; its axes are {a.axis_names}."
            )
    ref = arrays[0].axes
    parts = [_matching_array(ref, a, i, "concatenate", free=name) for i, a in enumerate(arrays)]
    total = sum(a.resolve_axis(name).size for a in arrays)
    if isinstance(axis, Axis) and axis.size != total:
        raise errors.AxisSizeError(
            f"concatenate: {axis!r} was asked for, but the arrays' {name!r} sizes add up to {total}."
        )
    pos = arrays[0].axis_names.index(name)
    out_axes = ref[:pos] + (Axis(name, total),) + ref[pos + 1 :]
    return wrap(jnp.concatenate(parts, axis=pos), out_axes)


def unstack(x: NamedArray, axis: AxisSelector) -> list[NamedArray]:
    """Cut ``x`` into the slices along one axis, which is dropped from each.

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> x = distmap.named(jnp.array([[1, 2], [3, 4]]), ("row", "col"))
        >>> [r.array.tolist() for r in distmap.unstack(x, "row")]
        [[1, 2], [3, 4]]
    """
    x = check_named(x, "unstack")
    i = x.axis_indices(single_axis(axis, "unstack"))
    arr = jnp.moveaxis(x.array, i, 0)
    rest = x.axes[:i] + x.axes[i + 1 :]
    return [wrap(arr[k], rest) for k in range(x.axes[i].size)]


def split(x: NamedArray, axis: AxisSelector, new_axes: Sequence[Axis]) -> list[NamedArray]:
    """Cut one axis into consecutive pieces, one per ``Axis`` in ``new_axes``.

    Piece ``k`` has ``new_axes[k]`` where ``axis`` was; the sizes must add up to the
    axis's size. Pieces may keep the old name or take new ones.

    Example:
        >>> import distmap
        >>> x = distmap.arange(distmap.Axis("seq", 5))
        >>> head, tail = distmap.split(x, "seq", [distmap.Axis("seq", 2), distmap.Axis("rest", 3)])
        >>> head.array.tolist(), tail.shape
        ([0, 1], {'rest': 3})
    """
    x = check_named(x, "split")
    i = x.axis_indices(single_axis(axis, "split"))
    ax = x.axes[i]
    if isinstance(new_axes, (Axis, str, Mapping)) or not isinstance(new_axes, Iterable):
        raise errors.AxisSelectorError(
            f"split: new_axes must be a sequence of Axis (one per piece), got {new_axes!r}."
        )
    pieces = list(new_axes)
    for p in pieces:
        if not isinstance(p, Axis):
            raise errors.AxisSelectorError(
                f"split: new_axes must be Axis objects, which carry each piece's size; got {type(p).__name__} {p!r}."
            )
    total = sum(p.size for p in pieces)
    if total != ax.size:
        raise errors.AxisSizeError(
            f"split: the pieces {format_axes(pieces)} add up to {total}, but axis {ax.name!r} has size {ax.size}."
        )
    others = {a.name for a in x.axes if a.name != ax.name}
    for p in pieces:
        if p.name in others:
            raise errors.DuplicateAxisError(
                f"split: piece axis {p.name!r} clashes with another axis of x {x.axis_names}."
            )
    bounds = np.cumsum([p.size for p in pieces])[:-1].tolist()
    parts = jnp.split(x.array, bounds, axis=i) if pieces else []
    return [wrap(arr, x.axes[:i] + (p,) + x.axes[i + 1 :]) for arr, p in zip(parts, pieces)]


# ------------------------------------------------------------------- indexing
def take(x: NamedArray, axis: AxisSelector, index: Any) -> NamedArray:
    """Pick entries of ``x`` along one axis.

    * An ``int`` (or a 0-d integer array, traced or not) picks one entry and drops the axis.
    * A NamedArray of integers puts its own axes where ``axis`` was. Axes that the
      index shares with ``x`` are matched elementwise (each of their positions picks its own
      entry, like ``take_along_axis``) and keep their place in ``x``.

    Negative indices count from the end. An ``int`` out of range raises
    ``IndexError``; out-of-range entries of an index array are clamped, as in JAX
    indexing.

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> logits = distmap.named(jnp.array([[0., 1., 2.], [3., 4., 5.]]), ("batch", "vocab"))
        >>> distmap.take(logits, "vocab", -1).array.tolist()
        [2.0, 5.0]
        >>> picks = distmap.named(jnp.array([0, 2, 2, 1]), "token")
        >>> distmap.take(logits, "vocab", picks).shape
        {'batch': 2, 'token': 4}
        >>> labels = distmap.named(jnp.array([1, 0]), "batch")
        >>> distmap.take(logits, "vocab", labels).array.tolist()
        [1.0, 3.0]
    """
    x = check_named(x, "take")
    i = x.axis_indices(single_axis(axis, "take"))
    ax = x.axes[i]
    if not isinstance(index, NamedArray):
        if isinstance(index, (bool, np.bool_)):
            raise errors.AxisSelectorError(f"take: a bool is not an index (axis {ax.name!r}).")
        if isinstance(index, (numbers.Integral, np.integer)) or (
            hasattr(index, "shape") and tuple(index.shape) == () and jnp.issubdtype(index.dtype, jnp.integer)
        ):
            return x[ax.name, index]
        if hasattr(index, "shape") and hasattr(index, "dtype") and tuple(index.shape) != ():
            raise errors.ShapeMismatchError(
                f"take: an unnamed index array of shape {tuple(index.shape)} cannot be placed by name; "
                "give its axes names with distmap.named first."
            )
        raise errors.AxisSelectorError(
            f"take: expected an int, a 0-d integer array or a NamedArray of integers as the index, "
            f"got {type(index).__name__} {index!r}."
        )
    if not jnp.issubdtype(index.dtype, jnp.integer):
        raise errors.AxisSelectorError(f"take: the index must hold integers, got dtype {index.dtype}.")
    others = {a.name: a for a in x.axes if a.name != ax.name}
    shared = []
    for a in index.axes:
        if a.name in others:
            if others[a.name].size != a.size:
                raise errors.AxisSizeError(
                    f"take: axis {a.name!r} has size {others[a.name].size} in x but size {a.size} in the index; "
                    "axes the index shares with x are matched elementwise and must agree."
                )
            shared.append(a.name)
    new = tuple(a for a in index.axes if a.name not in others)
    out_axes = x.axes[:i] + new + x.axes[i + 1 :]
    if not shared:
        return wrap(x.array[(slice(None),) * i + (index.array,)], out_axes)
    # Shared axes: index every dimension with an integer array laid out against the result.
    pos = {a.name: k for k, a in enumerate(out_axes)}
    idx = []
    for d, a in enumerate(x.axes):
        if d == i:
            idx.append(align(index, out_axes))
        else:
            shape = [1] * len(out_axes)
            shape[pos[a.name]] = a.size
            idx.append(jnp.arange(a.size).reshape(shape))
    return wrap(x.array[tuple(idx)], out_axes)


# ----------------------------------------------------------------- broadcasting
def broadcast_axis(x: NamedArray | Any, axes: SizedAxes) -> NamedArray:
    """Make sure ``x`` has ``axes``: the ones it lacks are added at the front, in the order given.

    An axis that ``x`` already has with the same size is left where it is (so
    ``broadcast_axis`` is idempotent); one it has with another size raises
    :class:`~distmap.errors.AxisSizeError`. ``x`` may be a scalar. Use
    :func:`broadcast_to` to fix the exact order.

    Example:
        >>> import distmap
        >>> x = distmap.zeros({"feature": 3})
        >>> distmap.broadcast_axis(x, {"batch": 2, "feature": 3}).shape
        {'batch': 2, 'feature': 3}
    """
    x = as_named(x, "broadcast_axis")
    present = x.shape
    add = []
    for a in to_axes(axes, what="broadcast_axis(axes=...)"):
        if a.name in present:
            if present[a.name] != a.size:
                raise errors.AxisSizeError(
                    f"broadcast_axis: axis {a.name!r} has size {present[a.name]} in x but size {a.size} in axes."
                )
        else:
            add.append(a)
    if not add:
        return x
    out_axes = tuple(add) + x.axes
    return wrap(jnp.broadcast_to(x.array, tuple(a.size for a in out_axes)), out_axes)


def broadcast_to(x: NamedArray | Any, axes: AxisSelection) -> NamedArray:
    """Broadcast ``x`` to exactly ``axes``, in that order.

    Every axis of ``x`` must be among ``axes`` (with the same size, where one is
    given); axes ``x`` lacks must come with sizes. ``x`` may be a scalar.

    Example:
        >>> import distmap
        >>> x = distmap.arange(distmap.Axis("feature", 3))
        >>> y = distmap.broadcast_to(x, ("feature", distmap.Axis("batch", 2)))
        >>> y.shape
        {'feature': 3, 'batch': 2}
    """
    x = as_named(x, "broadcast_to")
    present = {a.name: a for a in x.axes}
    target = []
    for name, size in parse_selection(axes, what="broadcast_to(axes=...)"):
        if name in present:
            if size is not None and size != present[name].size:
                raise errors.AxisSizeError(
                    f"broadcast_to: axis {name!r} has size {present[name].size} in x but size {size} in axes."
                )
            target.append(present[name])
        elif size is None:
            raise errors.AxisSelectorError(
                f"broadcast_to: x has no axis {name!r} (its axes are {x.axis_names}), so it needs a size: "
                f"pass Axis({name!r}, n) or {{{name!r}: n}}."
            )
        else:
            target.append(Axis(name, size))
    out_axes = tuple(target)
    names = {a.name for a in out_axes}
    extra = tuple(n for n in x.axis_names if n not in names)
    if extra:
        raise errors.AxisNotFoundError(
            f"broadcast_to: x has axes {extra} that are not among the target axes {tuple(a.name for a in out_axes)}; "
            "broadcasting only adds axes (reduce or index the others away first)."
        )
    return wrap(jnp.broadcast_to(align(x, out_axes), tuple(a.size for a in out_axes)), out_axes)


# ----------------------------------------------------------------- reshaping
def flatten_axes(x: NamedArray, axes: AxisSelection, new_axis: AxisSelector) -> NamedArray:
    """Merge several axes into one, in the order given (the first given varies slowest).

    The merged axis takes the place of the first axis in ``axes``: it goes after the
    remaining axes that came before that one in ``x``. ``new_axis`` is a name, or an
    ``Axis`` whose size must be the product of the merged sizes.

    Example:
        >>> import distmap
        >>> x = distmap.zeros({"batch": 2, "seq": 3, "feature": 4})
        >>> distmap.flatten_axes(x, ("batch", "seq"), "token").shape
        {'token': 6, 'feature': 4}
        >>> distmap.flatten_axes(x, ("feature", "batch"), "fb").shape
        {'seq': 3, 'fb': 8}
    """
    x = check_named(x, "flatten_axes")
    old = x.resolve_axis(axes)
    old = (old,) if isinstance(old, Axis) else old
    if not old:
        raise errors.AxisSelectorError("flatten_axes: name at least one axis to flatten.")
    size = 1
    for a in old:
        size *= a.size
    name = axis_name(new_axis)
    if isinstance(new_axis, Axis) and new_axis.size != size:
        raise errors.AxisSizeError(
            f"flatten_axes: {new_axis!r} was asked for, but the merged axes {format_axes(old)} have {size} elements."
        )
    old_names = {a.name for a in old}
    remaining = [k for k, a in enumerate(x.axes) if a.name not in old_names]
    if name in {x.axes[k].name for k in remaining}:
        raise errors.DuplicateAxisError(
            f"flatten_axes: the new axis {name!r} clashes with an axis that is not being flattened {x.axis_names}."
        )
    first = x.axis_names.index(old[0].name)
    before = [k for k in remaining if k < first]
    after = [k for k in remaining if k > first]
    perm = before + [x.axis_names.index(a.name) for a in old] + after
    moved = x._permute(perm)
    out_axes = (
        tuple(x.axes[k] for k in before) + (Axis(name, size),) + tuple(x.axes[k] for k in after)
    )
    return wrap(jnp.reshape(moved.array, tuple(a.size for a in out_axes)), out_axes)


def unflatten_axis(x: NamedArray, axis: AxisSelector, new_axes: SizedAxes) -> NamedArray:
    """Split one axis into several, in place; their sizes must multiply to its size.

    The first new axis varies slowest (row-major, as ``reshape``), so
    ``unflatten_axis`` undoes :func:`flatten_axes`.

    Example:
        >>> import distmap
        >>> x = distmap.zeros({"token": 6, "feature": 4})
        >>> distmap.unflatten_axis(x, "token", {"batch": 2, "seq": 3}).shape
        {'batch': 2, 'seq': 3, 'feature': 4}
    """
    x = check_named(x, "unflatten_axis")
    i = x.axis_indices(single_axis(axis, "unflatten_axis"))
    ax = x.axes[i]
    new = to_axes(new_axes, what="unflatten_axis(new_axes=...)")
    size = 1
    for a in new:
        size *= a.size
    if size != ax.size:
        raise errors.AxisSizeError(
            f"unflatten_axis: the new axes {format_axes(new)} have {size} elements, but axis {ax.name!r} has size "
            f"{ax.size}."
        )
    others = {a.name for a in x.axes if a.name != ax.name}
    clash = [a.name for a in new if a.name in others]
    if clash:
        raise errors.DuplicateAxisError(
            f"unflatten_axis: new axes {clash} clash with other axes of x {x.axis_names}."
        )
    out_axes = x.axes[:i] + new + x.axes[i + 1 :]
    return wrap(jnp.reshape(x.array, tuple(a.size for a in out_axes)), out_axes)


def rearrange(x: NamedArray, order: Sequence[AxisSelector | Any]) -> NamedArray:
    """Permute axes: every axis once, or ``...`` standing for the others (function form of the method).

    Example:
        >>> import distmap
        >>> x = distmap.zeros({"a": 1, "b": 2, "c": 3})
        >>> distmap.rearrange(x, ("c", "a", "b")).axis_names
        ('c', 'a', 'b')
        >>> distmap.rearrange(x, (..., "a")).axis_names
        ('b', 'c', 'a')
    """
    return check_named(x, "rearrange").rearrange(order)


def rename(x: NamedArray, mapping: Mapping[AxisSelector, str | Axis]) -> NamedArray:
    """Rename axes, keeping sizes and order (function form of the method).

    Example:
        >>> import distmap
        >>> distmap.rename(distmap.zeros({"a": 1, "b": 2}), {"a": "x"}).shape
        {'x': 1, 'b': 2}
    """
    return check_named(x, "rename").rename(mapping)


# ------------------------------------------------------------------ selection
def where(condition: NamedArray | Any, x: NamedArray | Any, y: NamedArray | Any) -> NamedArray:
    """``x`` where ``condition`` holds, else ``y``, broadcasting the three by name.

    Any of them may be a scalar. The result's axes are the union of theirs, in
    order of first appearance (``condition`` first).

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> x = distmap.named(jnp.array([-1.0, 2.0, -3.0]), "batch")
        >>> distmap.where(x > 0, x, 0.0).array.tolist()
        [0.0, 2.0, 0.0]
    """
    axes, (c, a, b) = broadcast_operands(
        (("condition", condition), ("x", x), ("y", y)), "where"
    )
    return wrap(jnp.where(c, a, b), axes)


# -------------------------------------------------------------------- helpers




def _named_list(arrays: Any, fn: str) -> list[NamedArray]:
    if isinstance(arrays, NamedArray) or not isinstance(arrays, Iterable):
        raise errors.ArgumentTypeError(f"{fn}: expected a sequence of NamedArrays, got {type(arrays).__name__}.")
    out = list(arrays)
    if not out:
        raise errors.ShapeMismatchError(f"{fn}: needs at least one array, got an empty sequence.")
    for i, a in enumerate(out):
        if not isinstance(a, NamedArray):
            raise errors.ArgumentTypeError(
                f"{fn}: arrays[{i}] must be a NamedArray, got {type(a).__name__}; give it names with distmap.named."
            )
    return out


def _matching_array(ref: tuple[Axis, ...], x: NamedArray, i: int, fn: str, free: str | None = None) -> jax.Array:
    """``x.array`` laid out in ``ref``'s order, checking ``x`` has the same axes (sizes may differ on ``free``)."""
    if x.axes == ref:
        return x.array
    if sorted(x.axis_names) != sorted(a.name for a in ref):
        raise errors.ShapeMismatchError(
            f"{fn}: arrays[{i}] has axes {x.axis_names} but arrays[0] has {tuple(a.name for a in ref)}; "
            "every array must have the same axes (in any order)."
        )
    by_name = x.shape
    for a in ref:
        if a.name != free and by_name[a.name] != a.size:
            raise errors.AxisSizeError(
                f"{fn}: axis {a.name!r} has size {a.size} in arrays[0] but size {by_name[a.name]} in arrays[{i}]."
            )
    pos = {n: k for k, n in enumerate(x.axis_names)}
    perm = [pos[a.name] for a in ref]
    return x._permute(perm).array







