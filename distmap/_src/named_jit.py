"""``named_jit``: ``jax.jit`` whose input and output shardings come from axis names.

``named_jit(fn, axis_mapping)(*args)`` places every NamedArray argument by its names
(:func:`distmap.shard`), runs ``fn`` jitted with ``axis_mapping`` current (so ``shard``,
``vmap`` and ``pspec_for`` inside see it) and constrains every NamedArray output to the
layout its names ask for. Non-array arguments are static (hashed), as in ``eqx.filter_jit``;
the mapping and the mesh are part of the cache key, so changing either retraces.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import equinox as eqx

from distmap import errors
from distmap._src import mesh as mesh_lib


def named_jit(
    fn: Callable[..., Any] | None = None,
    axis_mapping: Any = None,
    *,
    in_axis_mapping: Any = None,
    out_axis_mapping: Any = None,
    mesh: Any = None,
    donate: str = "none",
    axis_resources: Any = None,
    in_axis_resources: Any = None,
    out_axis_resources: Any = None,
) -> Any:
    """Jit ``fn`` with shardings for its NamedArray inputs and outputs derived from their axis names.

    Args:
        fn: the function (or leave it out to use ``named_jit(axis_mapping=...)`` as a decorator).
        axis_mapping: the mapping current inside ``fn``; defaults to the one current at call time.
        in_axis_mapping: how NamedArray arguments are placed (default ``axis_mapping``).
        out_axis_mapping: how NamedArray results are laid out (default ``axis_mapping``).
        mesh: the mesh (default: the one set with ``jax.set_mesh`` at call time).
        donate: ``eqx.filter_jit``'s ``donate``: ``"none"``, ``"all"`` or ``"all-except-first"``.
        axis_resources, in_axis_resources, out_axis_resources: Haliax's names for the three mappings.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> step = distmap.named_jit(lambda x: x * 2, {"batch": "data"}, mesh=mesh)
        >>> y = step(distmap.ones({"batch": 4, "feature": 2}))
        >>> tuple(y.array.sharding.spec), y.array.tolist()[0]
        (('data', None), [2.0, 2.0])
    """
    axis_mapping = _one_of("axis_mapping", axis_mapping, "axis_resources", axis_resources)
    in_axis_mapping = _one_of("in_axis_mapping", in_axis_mapping, "in_axis_resources", in_axis_resources)
    out_axis_mapping = _one_of("out_axis_mapping", out_axis_mapping, "out_axis_resources", out_axis_resources)
    if fn is None:
        return functools.partial(
            named_jit, axis_mapping=axis_mapping, in_axis_mapping=in_axis_mapping,
            out_axis_mapping=out_axis_mapping, mesh=mesh, donate=donate,
        )
    if not callable(fn):
        raise TypeError(f"named_jit: fn must be callable, got {type(fn).__name__}.")
    mesh = mesh_lib.check_mesh(mesh, "named_jit")
    given = {
        "axis_mapping": axis_mapping, "in_axis_mapping": in_axis_mapping, "out_axis_mapping": out_axis_mapping
    }
    fixed = {k: (None if v is None else mesh_lib.as_axis_mapping(v)) for k, v in given.items()}

    def body(static: tuple, args: tuple, kwargs: dict) -> Any:
        inner, out_map, the_mesh = static
        with mesh_lib.axis_mapping(inner):
            out = fn(*args, **kwargs)
        return mesh_lib.shard(out, out_map, the_mesh)

    jitted = eqx.filter_jit(body, donate=donate)

    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        inner = fixed["axis_mapping"] or mesh_lib.current_axis_mapping()
        if inner is None:
            raise errors.MeshError(
                "named_jit: no axis mapping given and none is current; pass named_jit(fn, {'batch': 'data'}) "
                "or call it inside distmap.axis_mapping(...)."
            )
        the_mesh = mesh if mesh is not None else mesh_lib.current_mesh()
        if the_mesh is None:
            raise errors.MeshError("named_jit: no mesh given and none set with jax.set_mesh.")
        in_map = fixed["in_axis_mapping"] or inner
        out_map = fixed["out_axis_mapping"] or inner
        args, kwargs = mesh_lib.shard((args, kwargs), in_map, the_mesh)
        return jitted((inner, out_map, the_mesh), args, kwargs)

    return call


def _one_of(ours: str, a: Any, theirs: str, b: Any) -> Any:
    if a is not None and b is not None:
        raise errors.MeshError(f"named_jit: pass {ours}= or {theirs}= (Haliax's name), not both.")
    return a if a is not None else b
