"""Global arrays from per-process data and back, by axis name.

In a multi-process run each process feeds its own slice of a mapped axis;
:func:`host_local_to_global` stitches those slices into one global ``jax.Array`` per
NamedArray, split over the mesh as the axis mapping says, so a sharded
``distmap.vmap`` sees one global array. :func:`global_to_host_local` is the inverse.
Both are JAX's own (``jax.make_array_from_process_local_data``,
``multihost_utils.global_array_to_host_local_array``); what distmap adds is the partition
spec from the axis names and errors that name the axis.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from distmap import errors
from distmap._src.mesh import (
    AxisMapping,
    AxisMappingLike,
    check_mapping_arg,
    named_pspec,
    resolve_mapping,
    check_mesh,
    entry_axes,
    current_mesh,
)
from distmap._src.named import NamedArray, is_named_array, wrap


def _mesh(mesh: Mesh | None, fn: str) -> Mesh:
    given = check_mesh(mesh, fn)
    found = given if given is not None else current_mesh()
    if not isinstance(found, Mesh):
        raise errors.MeshError(f"{fn}: no concrete mesh given and none set with jax.set_mesh.")
    return found


def _local_devices_along(mesh: Mesh, part: Any) -> tuple[tuple[str, ...], int, int]:
    """The mesh axes of one ``PartitionSpec`` entry, the devices along them and this process's share of those."""
    axes = entry_axes(part)
    n = math.prod(mesh.shape[a] for a in axes)
    local = math.prod(mesh.local_mesh.shape[a] for a in axes)
    return axes, n, local


def host_local_to_global(
    x: Any, axis_mapping: AxisMappingLike | AxisMapping | None = None, mesh: Mesh | None = None
) -> Any:
    """Stitch each process's slice of every NamedArray in ``x`` into one global array.

    Arguments in the order of :func:`distmap.shard`: ``host_local_to_global(x, axis_mapping, mesh)``,
    each defaulting to the current one.

    Each process passes NamedArrays whose mapped axes hold only its own part (for example
    its rows of ``batch``); the result has the global sizes and is split over ``mesh`` by
    name. Processes must pass equal-sized parts. With one process this is ``distmap.shard``.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> g = distmap.distributed.host_local_to_global(distmap.zeros({"batch": 4}), {"batch": "data"}, mesh)
        >>> g.shape
        {'batch': 4}
    """
    check_mapping_arg(axis_mapping, "host_local_to_global")
    mesh = _mesh(mesh, "host_local_to_global")
    mapping = resolve_mapping(axis_mapping, "host_local_to_global")

    def one(leaf: Any) -> Any:
        if not isinstance(leaf, NamedArray):
            return leaf
        mapping.resolve(leaf.axis_names, mesh)  # a mesh axis the mesh lacks: the MeshError distmap.shard raises
        spec = named_pspec(leaf, mapping, None)  # split as mapped: divisibility is checked on the global sizes below
        for a, part in zip(leaf.axes, tuple(spec) + (None,) * (leaf.ndim - len(spec))):
            axes, n, local = _local_devices_along(mesh, part)
            if a.size % local:
                g = a.size * (n // local)
                raise errors.AxisSizeError(
                    f"host_local_to_global: axis {a.name!r} has {a.size} elements in this process "
                    f"({g} in all over {n // local} process(es)), which mesh axes {axes} ({n} devices) do not divide."
                )
        # JAX infers the global shape: each process holds its own block of every dimension split across processes.
        arr = jax.make_array_from_process_local_data(NamedSharding(mesh, spec), np.asarray(leaf.array))
        return wrap(arr, tuple(a.resize(g) for a, g in zip(leaf.axes, arr.shape)))

    return jax.tree_util.tree_map(one, x, is_leaf=is_named_array)


def global_to_host_local(x: Any) -> Any:
    """This process's part of every global NamedArray in ``x``, as host-local NamedArrays.

    The inverse of :func:`host_local_to_global` (JAX's
    ``multihost_utils.global_array_to_host_local_array``): each dimension keeps the block of
    indices that this process's devices hold. An array one process holds whole is returned as is.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> g = distmap.distributed.host_local_to_global(distmap.ones({"batch": 4}), {"batch": "data"}, mesh)
        >>> distmap.distributed.global_to_host_local(g).array.tolist()
        [1.0, 1.0, 1.0, 1.0]
    """

    def one(leaf: Any) -> Any:
        if not isinstance(leaf, NamedArray):
            return leaf
        arr = leaf.array
        if arr.is_fully_addressable:
            return leaf  # one process holds all of it already
        sharding = arr.sharding
        if not isinstance(sharding, NamedSharding) or not isinstance(sharding.mesh, Mesh):
            raise errors.MeshError(
                f"global_to_host_local: an array of axes {leaf.axis_names} is laid out by {type(sharding).__name__}, "
                "not a NamedSharding over a concrete mesh; reshard it with distmap.shard first."
            )
        local = multihost_utils.global_array_to_host_local_array(arr, sharding.mesh, sharding.spec)
        return wrap(local, tuple(a.resize(n) for a, n in zip(leaf.axes, local.shape)))

    return jax.tree_util.tree_map(one, x, is_leaf=is_named_array)
