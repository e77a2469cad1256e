"""Global arrays from per-process data and back, by axis name.

In a multi-process run each process feeds its own slice of a mapped axis;
:func:`host_local_to_global` stitches those slices into one global ``jax.Array`` per
NamedArray, split over the mesh as the axis mapping says, so a sharded
``distmap.vmap`` sees one global array. :func:`global_to_host_local` is the inverse.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

from distmap import errors
from distmap._src.mesh import AxisMapping, AxisMappingLike, _pspec, _resolve_mapping, current_mesh
from distmap._src.named import NamedArray, _wrap


def _is_named(x: Any) -> bool:
    return isinstance(x, NamedArray)


def _mesh(mesh: Mesh | None, fn: str) -> Mesh:
    mesh = mesh if mesh is not None else current_mesh()
    if not isinstance(mesh, Mesh):
        raise errors.MeshError(f"{fn}: no concrete mesh given and none set with jax.set_mesh.")
    return mesh


def _process_blocks(mesh: Mesh, spec: Any, ndim: int) -> list[int]:
    """For each dimension, how many processes' slices it is made of (1 where it is not split across processes)."""
    out = []
    pid = np.vectorize(lambda d: d.process_index)(mesh.devices)
    names = list(mesh.axis_names)
    for d in range(ndim):
        part = spec[d] if d < len(spec) else None
        axes = () if part is None else ((part,) if isinstance(part, str) else tuple(part))
        if not axes:
            out.append(1)
            continue
        # Count the distinct processes met walking along these mesh axes from this process's first device.
        idx = [int(i[0]) for i in np.nonzero(pid == jax.process_index())]
        procs = set()
        moving = [names.index(a) for a in axes]
        for pos in np.ndindex(*[mesh.devices.shape[m] for m in moving]):
            at = list(idx)
            for m, p in zip(moving, pos):
                at[m] = p
            procs.add(int(pid[tuple(at)]))
        out.append(len(procs))
    return out


def host_local_to_global(
    x: Any, mesh: Mesh | None = None, axis_mapping: AxisMappingLike | AxisMapping | None = None
) -> Any:
    """Stitch each process's slice of every NamedArray in ``x`` into one global array.

    Each process passes NamedArrays whose mapped axes hold only its own part (for example
    its rows of ``batch``); the result has the global sizes and is split over ``mesh`` by
    name. Processes must pass equal-sized parts. With one process this is ``distmap.shard``.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> g = distmap.distributed.host_local_to_global(distmap.zeros({"batch": 4}), mesh, {"batch": "data"})
        >>> g.shape
        {'batch': 4}
    """
    mesh = _mesh(mesh, "host_local_to_global")
    mapping = _resolve_mapping(axis_mapping, "host_local_to_global")

    def one(leaf: Any) -> Any:
        if not isinstance(leaf, NamedArray):
            return leaf
        mapping.resolve(leaf.axis_names, mesh)  # names a mesh axis the mesh lacks before JAX does
        spec = _pspec(leaf, mapping, None)
        blocks = _process_blocks(mesh, spec, leaf.ndim)
        global_shape = tuple(a.size * b for a, b in zip(leaf.axes, blocks))
        for a, b, g in zip(leaf.axes, blocks, global_shape):
            parts = dict(zip(leaf.axis_names, spec)).get(a.name)
            if parts is not None:
                axes = (parts,) if isinstance(parts, str) else parts
                n = int(np.prod([mesh.shape[m] for m in axes]))
                if g % n:
                    raise errors.AxisSizeError(
                        f"host_local_to_global: axis {a.name!r} has {a.size} elements in this process "
                        f"({g} in all over {b} process(es)), which mesh axes {axes} ({n} devices) do not divide."
                    )
        arr = jax.make_array_from_process_local_data(
            NamedSharding(mesh, spec), np.asarray(leaf.array), global_shape
        )
        return _wrap(arr, tuple(a.resize(g) for a, g in zip(leaf.axes, global_shape)))

    return jax.tree_util.tree_map(one, x, is_leaf=_is_named)


def global_to_host_local(x: Any) -> Any:
    """This process's part of every global NamedArray in ``x``, as host-local NamedArrays.

    The inverse of :func:`host_local_to_global`: each dimension keeps the span of indices
    that this process's devices hold.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> g = distmap.distributed.host_local_to_global(distmap.ones({"batch": 4}), mesh, {"batch": "data"})
        >>> distmap.distributed.global_to_host_local(g).array.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    def one(leaf: Any) -> Any:
        if not isinstance(leaf, NamedArray):
            return leaf
        arr = leaf.array
        shards = arr.addressable_shards
        lo = [min(s.index[d].indices(n)[0] for s in shards) for d, n in enumerate(arr.shape)]
        hi = [max(s.index[d].indices(n)[1] for s in shards) for d, n in enumerate(arr.shape)]
        out = np.empty(tuple(h - l for l, h in zip(lo, hi)), arr.dtype)
        for s in shards:
            where = tuple(slice(sl.indices(n)[0] - l, sl.indices(n)[1] - l) for sl, n, l in zip(s.index, arr.shape, lo))
            out[where] = np.asarray(s.data)
        return _wrap(jax.numpy.asarray(out), tuple(a.resize(h - l) for a, l, h in zip(leaf.axes, lo, hi)))

    return jax.tree_util.tree_map(one, x, is_leaf=_is_named)
