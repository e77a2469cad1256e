"""``distmap.vmap``: map a function over named axes.

On one device this lowers to ``jax.vmap`` (one level per axis, the axis name passed
as ``axis_name`` so named collectives work). Given a mesh and an axis mapping that
sends a mapped axis to mesh axes, the same call is lowered through ``jax.shard_map``
(see :mod:`distmap._src.sharded`), vmapping each device's shard with this module's code.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from distmap import errors
from distmap._src import frames, specs
from distmap._src import leaves as leaves_lib
from distmap._src.axis import Axis, AxisSelection, parse_selection
from distmap._src.named import NamedArray

_DEFAULT = specs.default_spec


def vmap(
    fn: Callable[..., Any],
    axis: AxisSelection,
    *,
    default: Any = _DEFAULT,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    chunk_size: int | None = None,
    mesh: Any = None,
    axis_mapping: Any = None,
) -> Callable[..., Any]:
    """Map ``fn`` over the named ``axis`` of every NamedArray argument that carries it.

    NamedArrays with the axis are mapped along it wherever it sits; NamedArrays
    without it are broadcast. Unnamed leaves follow ``default`` (arrays of rank >= 1
    on dim 0; rank-0 arrays, PRNG keys included, and non-array leaves unmapped),
    overridden per positional argument by ``args`` and per keyword by ``kwargs``.
    A spec is an int, ``None`` (not mapped), a callable ``leaf -> int | None``, or a
    pytree prefix of these.

    Several axes are mapped in turn, the first given outermost; outputs carry them at
    the front in the order given (NamedArrays by name, unnamed arrays at dim 0...).
    Outputs that do not depend on the mapped inputs are broadcast; non-array outputs
    are returned as they are. An axis no input carries is created, and then needs
    a size (``Axis("batch", 4)`` or ``{"batch": 4}``).

    Inside ``fn`` the named collectives (:func:`distmap.psum`, ``pmean``, ``pmax``,
    ``pmin``, ``all_gather``, ``axis_index``, ``axis_size``) work over the axis name.

    Args:
        fn: the function to map.
        axis: an ``Axis``, a name, a ``{name: size | None}`` mapping, or a sequence of them.
        default: the spec for unnamed leaves.
        args: per-positional-argument overrides of ``default`` (a tuple prefix).
        kwargs: per-keyword overrides of ``default``.
        chunk_size: map at most this many elements at once, in a sequential loop, so
            temporary memory scales with the chunk; results are identical. Named
            collectives over a chunked axis are refused (they would see one chunk).
        mesh: a ``jax.sharding.Mesh`` to split mapped axes over (defaults to the mesh
            set by ``jax.set_mesh`` when an axis mapping is active).
        axis_mapping: which mesh axes each named axis is split over, e.g.
            ``{"batch": "data"}`` (defaults to :func:`distmap.axis_mapping`'s context).

    Returns:
        The mapped function.

    Example:
        >>> import distmap
        >>> Batch, Feature = distmap.Axis("batch", 3), distmap.Axis("feature", 2)
        >>> x = distmap.ones((Feature, Batch))
        >>> y = distmap.vmap(lambda row: row.sum(), Batch)(x)
        >>> y.axis_names, y.array.tolist()
        (('batch',), [2.0, 2.0, 2.0])
    """
    parsed = parse_selection(axis, what="vmap(axis=...)")
    if not parsed:
        return fn
    if not callable(fn):
        raise TypeError(f"vmap: fn must be callable, got {type(fn).__name__}.")
    if chunk_size is not None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
            raise errors.MappingError(f"vmap(chunk_size=...): expected a positive int or None, got {chunk_size!r}.")
        chunk_size = int(chunk_size)
    if not isinstance(args, (tuple, list)):
        raise errors.MappingError(
            f"vmap(args=...): expected a tuple with one spec per positional argument, got {type(args).__name__}."
        )
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise errors.MappingError(
            f"vmap(kwargs=...): expected a dict with one spec per keyword, got {type(kwargs).__name__}."
        )
    kwargs = {} if kwargs is None else dict(kwargs)
    specs.check_spec(default, "default")
    specs.check_spec(tuple(args), "args")
    specs.check_spec(kwargs, "kwargs")
    plan = _Plan(parsed, default, tuple(args), kwargs, chunk_size)

    @functools.wraps(fn)
    def mapped(*call_args: Any, **call_kwargs: Any) -> Any:
        from distmap._src import sharded  # the mesh lowering; imported lazily to keep import time low

        lowering = sharded.resolve(parsed, mesh, axis_mapping)
        if lowering is not None:
            return sharded.call(fn, plan, lowering, call_args, call_kwargs)
        return map_axes(fn, plan, call_args, call_kwargs)

    return mapped


class _Plan:
    """What ``vmap`` was asked for, checked once at wrap time."""

    __slots__ = ("axes", "default", "args", "kwargs", "chunk_size")

    def __init__(self, axes, default, args, kwargs, chunk_size):
        self.axes: tuple[tuple[str, int | None], ...] = axes
        self.default = default
        self.args = args
        self.kwargs = kwargs
        self.chunk_size = chunk_size


def map_axes(
    fn: Callable[..., Any],
    plan: _Plan,
    args: Sequence[Any],
    kwargs: Mapping[str, Any],
    *,
    frame_for: Callable[[str, int], frames.MapFrame] | None = None,
) -> Any:
    """Map ``fn`` over ``plan.axes`` (first outermost) on the arrays as they are (no mesh).

    ``frame_for(name, local_size)`` lets the sharded lowering describe the mesh axes behind
    a name; by default each axis is a plain vmap axis.
    """
    return _map_level(fn, plan, 0, args, kwargs, frame_for)


def _map_level(fn, plan: _Plan, level: int, args, kwargs, frame_for) -> Any:
    if level == len(plan.axes):
        return fn(*args, **kwargs)
    name, given = plan.axes[level]

    def inner(*a: Any, **k: Any) -> Any:
        return _map_level(fn, plan, level + 1, a, k, frame_for)

    return _map_one(inner, name, given, plan, args, kwargs, frame_for)


def _map_one(fn, name: str, given: int | None, plan: _Plan, args, kwargs, frame_for) -> Any:
    args = tuple(args)
    leaves, treedef = jax.tree_util.tree_flatten((args, dict(kwargs)), is_leaf=leaves_lib.is_named)
    leaf_specs = None  # computed only if an unnamed array is present
    n = len(leaves)
    in_axes: list[int | None] = [None] * n
    kinds: list[Any] = [None] * n  # inner axes for NamedArrays, True for unnamed arrays, Static for the rest
    sizes: list[tuple[int, int]] = []  # (size, leaf index)
    for i, leaf in enumerate(leaves):
        if type(leaf) is NamedArray:
            axes = leaf.axes
            for d, ax in enumerate(axes):
                if ax.name == name:
                    in_axes[i] = d
                    kinds[i] = axes[:d] + axes[d + 1 :]
                    sizes.append((ax.size, i))
                    break
            else:
                kinds[i] = axes
        elif specs.is_array(leaf):
            kinds[i] = True
            if leaf_specs is None:
                leaf_specs = specs.leaf_specs(args, kwargs, plan.default, plan.args, plan.kwargs)
            d = specs.resolve(leaf_specs[i], leaf, leaf.shape, lambda: f"vmap over {name!r}: " + specs.leaf_paths(args, kwargs)[i])
            if d is not None:
                in_axes[i] = d
                sizes.append((leaf.shape[d], i))
        else:
            kinds[i] = leaves_lib.Static(leaf)
    size = _agree(name, given, sizes, args, kwargs)

    chunked = plan.chunk_size is not None and plan.chunk_size < size
    frame = frame_for(name, size) if frame_for is not None else frames.MapFrame(name, size, name, size)
    if chunked:
        frame = frames.MapFrame(**{**frame.__dict__, "chunked": True})
    out_info: list[Any] = []

    def body(*dyn: Any) -> tuple[Any, ...]:
        a, k = leaves_lib.join(treedef, kinds, dyn)
        with frames.pushed(frame):
            out = fn(*a, **k)
        out_tree, out_kinds, arrays = leaves_lib.split(out)
        for kind in out_kinds:
            if type(kind) is tuple and any(ax.name == name for ax in kind):
                raise errors.MappingError(
                    f"vmap over {name!r}: fn returned a NamedArray that already has axis {name!r} "
                    f"(axes {tuple(ax.name for ax in kind)}); rename it, since the map adds {name!r} to every output."
                )
        out_info[:] = [out_tree, out_kinds]
        return tuple(arrays)

    mapped = [not isinstance(kind, leaves_lib.Static) for kind in kinds]
    dyn_in = [leaf if kind is True else leaf.array for leaf, kind, m in zip(leaves, kinds, mapped) if m]
    dyn_axes = [ax for ax, m in zip(in_axes, mapped) if m]
    if chunked:
        out_arrays = _chunked_call(body, dyn_in, dyn_axes, size, plan.chunk_size)
    else:
        out_arrays = jax.vmap(body, in_axes=tuple(dyn_axes), axis_name=frame.vmap_name, axis_size=size)(*dyn_in)
    out_tree, out_kinds = out_info
    return leaves_lib.join(out_tree, out_kinds, out_arrays, front=(Axis(name, size),))


def _agree(name: str, given: int | None, sizes: list[tuple[int, int]], args, kwargs) -> int:
    """The axis size every mapped input agrees on (and the given size, if any)."""
    if not sizes:
        if given is None:
            raise errors.MappingError(
                f"vmap over {name!r}: no argument has axis {name!r} and no size was given; "
                f"pass Axis({name!r}, n) or {{{name!r}: n}} to create the axis."
            )
        return given
    first, i0 = sizes[0]
    if given is not None and given != first:
        path = specs.leaf_paths(args, kwargs)[i0]
        raise errors.AxisSizeError(
            f"axis {name!r} was given size {given} but has size {first} in {path}. "
            f"Pass the size the arrays have, or slice them to {given}."
        )
    for s, i in sizes[1:]:
        if s != first:
            paths = specs.leaf_paths(args, kwargs)
            raise errors.AxisSizeError(
                f"axis {name!r} has size {first} in {paths[i0]} but size {s} in {paths[i]}. "
                f"All arrays mapped over {name!r} must agree; rename one axis or slice the arrays to the same size."
            )
    return first


def _chunked_call(body, dyn_in, dyn_axes, size: int, chunk: int):
    """``jax.vmap(body)`` over ``size`` elements, at most ``chunk`` at a time, in a sequential loop."""
    import jax.numpy as jnp

    mapped_idx = [i for i, ax in enumerate(dyn_axes) if ax is not None]
    xs = [jnp.moveaxis(dyn_in[i], dyn_axes[i], 0) for i in mapped_idx]
    if not xs:
        xs = [jnp.zeros((size,), jnp.int8)]  # only the loop's length matters

    def one(x_slices):
        full = list(dyn_in)
        for i, x in zip(mapped_idx, x_slices):
            full[i] = x
        return body(*full)

    return jax.lax.map(one, xs, batch_size=chunk)
