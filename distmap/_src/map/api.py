"""``distmap.vmap``: map a function over named axes, on one device or across a mesh.

The call is resolved once into a :class:`~distmap._src.map.plan.Plan` (what every leaf
is, which dimension each mapped axis takes, each axis's size); then one of two lowerings
runs it: nested ``jax.vmap`` on one device (:mod:`.local`), or ``jax.shard_map`` with the
same nesting inside each shard when an axis mapping sends a mapped axis to mesh axes
(:mod:`.sharded`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from distmap import errors
from distmap._src.axis import AxisSelection, parse_selection
from distmap._src.map import local, plan as plan_lib, sharded, specs
from distmap._src.mesh import current_axis_mapping

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
    on dim 0; rank-0 arrays, typed PRNG keys included, and non-array leaves unmapped),
    overridden per parameter by ``args`` (positional parameters, in order) and ``kwargs``
    (by name), bound through ``fn``'s signature as in Haliax. A spec is an int, ``None``
    (not mapped), a callable ``leaf -> int | None``, or a pytree prefix of these.

    Several axes are mapped in turn, the first given outermost; outputs carry them at
    the front in the order given (NamedArrays by name, unnamed arrays at dim 0...).
    Array outputs that do not depend on the mapped inputs are broadcast; non-array
    outputs (a Python scalar, a string, ``None``) are returned as they are, as
    ``equinox.filter_vmap`` returns them. An axis no input carries is created, and then needs
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
            ``{"batch": "data"}`` (defaults to :func:`distmap.axis_mapping`'s context). Given
            here, every key must be a mapped axis. Where no mapping splits a mapped axis, an
            input already split on the mesh along it decides the split.

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
        raise errors.ArgumentTypeError(f"vmap: fn must be callable, got {type(fn).__name__}.")
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
    if default is not _DEFAULT:
        specs.check_spec(default, "default")
    if args:
        specs.check_spec(tuple(args), "args")
    if kwargs:
        specs.check_spec(kwargs, "kwargs")
    request = plan_lib.Request(parsed, default, tuple(args), kwargs, chunk_size, fn)
    compiled: list[sharded.Compiled] = []  # this mapped function's own compilation cache, made on first mesh call

    def mapped(*call_args: Any, **call_kwargs: Any) -> Any:
        splits_here = mesh is not None or axis_mapping is not None or current_axis_mapping() is not None
        lowering = sharded.resolve(request.names, mesh, axis_mapping) if splits_here else None
        plan, leaves = plan_lib.resolve(request, call_args, call_kwargs)
        if lowering is None:  # no mapping splits the map: inputs already split along it still say where it lives
            lowering = sharded.from_inputs(plan, leaves, mesh)
            if lowering is None and mesh is not None and axis_mapping is None and current_axis_mapping() is None:
                # mesh= given, and no mapping at all: the user asked for a mesh that nothing would use.
                raise errors.MeshError(
                    f"vmap over {request.names}: mesh={dict(mesh.shape)} was given, but nothing splits these axes "
                    "over it: there is no axis mapping, no mesh axis has their name, and no input is split along "
                    f"them. Pass axis_mapping={{{request.names[0]!r}: {tuple(mesh.axis_names)[0]!r}}} (say), or drop "
                    "mesh= to map on one device."
                )
        if lowering is not None:
            if not compiled:
                compiled.append(sharded.Compiled())
            return sharded.call(fn, chunk_size, lowering, plan, leaves, compiled[0])
        return local.run(fn, plan, plan.unwrap(leaves, plan.arrays), leaves, chunk_size=chunk_size)

    return _wraps(mapped, fn)


def _wraps(mapped: Callable[..., Any], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``functools.wraps`` for the attributes a reader looks at (names, doc, ``__wrapped__``), at a fraction
    of its cost: a map is often built afresh inside a traced function."""
    for attr in ("__module__", "__name__", "__qualname__", "__doc__"):
        try:
            setattr(mapped, attr, getattr(fn, attr))
        except AttributeError:
            pass
    mapped.__wrapped__ = fn  # type: ignore[attr-defined]  # a function takes attributes; mypy knows no __wrapped__
    return mapped
    return mapped
