"""The mesh lowering of ``distmap.vmap``: split mapped axes across devices with ``jax.shard_map``.

For each mapped axis that the axis mapping sends to mesh axes, every input carrying it
is split along it over those mesh axes (``in_specs``), and each device vmaps its shard
with the one-device code (:func:`distmap._src.vmap.map_axes`). The vmap axis name stands
for the local part and the mesh axes for the rest, so the named collectives combine both.

Uneven sizes: an axis of size ``n`` over ``k`` devices is mapped as ``ceil(n / k) * k``
elements. A ``jax.Array`` cannot be split unevenly, so such inputs arrive whole along
that axis and each device takes its own slice, the indices past ``n`` repeating the
last element (padding that never makes NaNs or infs the real data would not, in
gradients too). Collectives mask the padding. The output is cut back to ``n``, which
an evenly split array cannot hold: on an Explicit mesh it is gathered first (one
all-gather of that output, counted by ``benchmarks/bench_mesh.py``); on an Auto mesh
XLA picks the layout, and the cut fuses with a consumer inside the same ``jit``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distmap import errors
from distmap._src import frames, specs
from distmap._src import leaves as leaves_lib
from distmap._src.axis import Axis
from distmap._src.mesh import AxisMapping, as_axis_mapping, current_axis_mapping, current_mesh, typed_part
from distmap._src.named import NamedArray, _wrap


class Lowering:
    """Where the mapped axes go: the mesh, and for each sharded axis name its mesh axes."""

    __slots__ = ("mesh", "mesh_axes")

    def __init__(self, mesh: Mesh, mesh_axes: tuple[tuple[str, tuple[str, ...]], ...]):
        self.mesh = mesh
        self.mesh_axes = mesh_axes

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lowering) and (self.mesh, self.mesh_axes) == (other.mesh, other.mesh_axes)

    def __hash__(self) -> int:
        return hash((self.mesh, self.mesh_axes))

    def shards(self, name: str) -> int:
        axes = dict(self.mesh_axes).get(name, ())
        return math.prod(self.mesh.shape[a] for a in axes)


def resolve(parsed_axes: Sequence[tuple[str, int | None]], mesh: Any, axis_mapping: Any) -> Lowering | None:
    """The mesh lowering for a map over ``parsed_axes``, or None when it runs on one device."""
    if mesh is not None and not isinstance(mesh, (Mesh, jax.sharding.AbstractMesh)):
        raise errors.MeshError(f"vmap(mesh=...): expected a jax.sharding.Mesh, got {type(mesh).__name__}.")
    mapping: AxisMapping | None = as_axis_mapping(axis_mapping) if axis_mapping is not None else current_axis_mapping()
    names = [n for n, _ in parsed_axes]
    if mapping is None:
        if mesh is None:
            return None
        # A mesh without a mapping splits the named axes that share a mesh axis's name.
        mapping = AxisMapping(tuple((n, (n,)) for n in names if n in mesh.axis_names), ordered=False)
    found = mapping.resolve(names, None, what="map")
    found = {n: a for n, a in found.items() if a}
    if not found:
        return None
    the_mesh = mesh if mesh is not None else current_mesh()
    if the_mesh is None:
        raise errors.MeshError(
            f"vmap over {tuple(names)}: the axis mapping sends "
            + ", ".join(f"{n!r} to mesh axes {a}" for n, a in found.items())
            + ", but no mesh was given (mesh=...) and none is set with jax.set_mesh."
        )
    found = {n: a for n, a in mapping.resolve(names, the_mesh, what="map").items() if a}
    for frame in frames.current_frames():
        if frame.mesh_axes:
            raise errors.MeshError(
                f"vmap over {tuple(found)} (mesh axes {sorted({a for v in found.values() for a in v})}) is nested "
                f"inside a map already split over mesh axes {frame.mesh_axes} (axis {frame.name!r}); map both axes "
                "in one call, distmap.vmap(fn, (outer, inner)), or leave the inner axis out of the axis mapping."
            )
    return Lowering(the_mesh, tuple((n, found[n]) for n in names if n in found))


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def call(fn, plan, lowering: Lowering, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
    """Run the sharded map, always as a jitted (and cached) call; placed on the mesh first when called eagerly.

    Already traced (inside ``jit``, or under an eager ``vmap``/``grad``), the call nests: a
    ``reshard`` (Explicit meshes) evaluated eagerly under ``vmap`` would fail inside JAX.
    """
    leaves = jax.tree_util.tree_leaves((args, kwargs), is_leaf=leaves_lib.is_named)
    traced = any(_is_tracer(x.array if isinstance(x, NamedArray) else x) for x in leaves)
    if traced:
        return _jitted_run(fn, plan, lowering, tuple(args), dict(kwargs))
    args, kwargs = _place(plan, lowering, tuple(args), dict(kwargs))
    try:
        context = jax.set_mesh(lowering.mesh)
    except ValueError:
        # Under a transformation whose tracers fn closes over (grad with respect to captured
        # parameters, say) no mesh context can be entered; the call nests in that trace as above.
        return _jitted_run(fn, plan, lowering, args, kwargs)
    with context:
        return _jitted_run(fn, plan, lowering, args, kwargs)


def _leaf_dims(plan, leaves, args, kwargs) -> tuple[list[list[int | None]], dict[str, int]]:
    """For each leaf, the dimension each mapped axis occupies (None where not mapped), and each axis's size."""
    names = [n for n, _ in plan.axes]
    leaf_specs = None
    dims: list[list[int | None]] = []
    sizes: dict[str, list[tuple[int, int]]] = {n: [] for n in names}
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, NamedArray):
            pos = {a.name: d for d, a in enumerate(leaf.axes)}
            row = [pos.get(n) for n in names]
            for n, d in zip(names, row):
                if d is not None:
                    sizes[n].append((leaf.axes[d].size, i))
        elif specs.is_array(leaf):
            if leaf_specs is None:
                leaf_specs = specs.leaf_specs(args, kwargs, plan.default, plan.args, plan.kwargs)
            remaining = list(range(jnp.ndim(leaf)))
            row = []
            view: Any = leaf
            for n in names:
                shape = tuple(leaf.shape[r] for r in remaining)
                k = specs.resolve(leaf_specs[i], view, shape, lambda: f"vmap over {n!r}: " + specs.leaf_paths(args, kwargs)[i])
                if k is None:
                    row.append(None)
                    continue
                d = remaining.pop(k)
                row.append(d)
                sizes[n].append((leaf.shape[d], i))
                view = jax.ShapeDtypeStruct(tuple(leaf.shape[r] for r in remaining), leaf.dtype)
        else:
            row = [None] * len(names)
        dims.append(row)
    from distmap._src.vmap import _agree

    agreed = {n: _agree(n, given, sizes[n], args, kwargs) for n, given in plan.axes}
    return dims, agreed


def _spec_for(row: Sequence[int | None], ndim: int, names: Sequence[str], mesh_axes: Mapping[str, tuple[str, ...]]) -> PartitionSpec:
    parts: list[Any] = [None] * ndim
    for n, d in zip(names, row):
        axes = mesh_axes.get(n)
        if d is not None and axes:
            parts[d] = axes[0] if len(axes) == 1 else axes
    return PartitionSpec(*parts)


def _place(plan, lowering: Lowering, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Put arrays that are not yet on the mesh on it, in the layout the map wants (where it divides evenly).

    Host (numpy) arrays and ``jax.Array``s held elsewhere (one device, another mesh) are placed;
    a ``jit`` would refuse committed arrays on other devices. Arrays already on this mesh are
    left as they are: in the map's layout they are used without a copy, in any other layout
    the map's ``jit`` reshards them once.
    """
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs), is_leaf=leaves_lib.is_named)

    def elsewhere(arr: Any) -> bool:
        if not specs.is_array(arr):
            return False
        sharding = getattr(arr, "sharding", None)
        return not (isinstance(sharding, NamedSharding) and sharding.mesh == lowering.mesh)

    if not any(elsewhere(x.array if isinstance(x, NamedArray) else x) for x in leaves):
        return args, kwargs
    dims, sizes = _leaf_dims(plan, leaves, args, kwargs)
    names = [n for n, _ in plan.axes]
    mesh_axes = dict(lowering.mesh_axes)
    multi_process = getattr(lowering.mesh, "is_multi_process", False)
    out = []
    for i, (leaf, row) in enumerate(zip(leaves, dims)):
        arr = leaf.array if isinstance(leaf, NamedArray) else leaf
        if elsewhere(arr) and multi_process and (isinstance(arr, jax.Array) or any(d is not None for d in row)):
            # Each process holds its own such array: placing it as if it were the global value
            # would silently mix different data (a host array) or fail inside JAX (a local jax.Array).
            raise errors.MeshError(
                f"vmap over {tuple(names)}: {specs.leaf_paths(args, kwargs)[i]} is a process-local array, but the "
                f"mesh {dict(lowering.mesh.shape)} spans {jax.process_count()} processes. Build global inputs with "
                "distmap.distributed.host_local_to_global (each process passing its own rows), or distmap.shard."
            )
        if elsewhere(arr):
            even = all(sizes[n] % lowering.shards(n) == 0 for n, d in zip(names, row) if d is not None and n in mesh_axes)
            spec = _spec_for(row, jnp.ndim(arr), names, mesh_axes) if even else PartitionSpec()
            arr = jax.device_put(arr, NamedSharding(lowering.mesh, spec))
            leaf = _wrap(arr, leaf.axes) if isinstance(leaf, NamedArray) else arr
        out.append(leaf)
    return jax.tree_util.tree_unflatten(treedef, out)


def _take_local(block: jax.Array, dim: int, size: int, local: int, mesh_axes: tuple[str, ...]) -> jax.Array:
    """This device's ``local`` elements of a dimension held whole, the indices past ``size`` clamped to its end.

    The padding thus repeats the last real element, so it never produces values (NaN, inf)
    that the real data would not, not even in gradients.
    """
    start = jax.lax.axis_index(mesh_axes) * local
    idx = jnp.minimum(start + jnp.arange(local), size - 1)
    return jnp.take(block, idx, axis=dim)


def _run(fn, plan, lowering: Lowering, args: tuple, kwargs: dict) -> Any:
    from distmap._src.vmap import _Plan, map_axes

    mesh = lowering.mesh
    mesh_axes = dict(lowering.mesh_axes)
    names = [n for n, _ in plan.axes]
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs), is_leaf=leaves_lib.is_named)
    dims, sizes = _leaf_dims(plan, leaves, args, kwargs)
    shards = {n: lowering.shards(n) for n in mesh_axes}
    padded = {n: -(-sizes[n] // shards[n]) * shards[n] for n in mesh_axes}
    local = {n: (padded[n] // shards[n] if n in mesh_axes else sizes[n]) for n in names}

    # Evenly split axes go through in_specs; an uneven one is held whole along its dimension (a
    # jax.Array cannot be split unevenly anyway) and each device takes its slice in the body.
    even_axes = {n: a for n, a in mesh_axes.items() if padded[n] == sizes[n]}
    dyn, dyn_specs, kinds, takes = [], [], [], []
    for leaf, row in zip(leaves, dims):
        if isinstance(leaf, NamedArray) or specs.is_array(leaf):
            arr = leaf.array if isinstance(leaf, NamedArray) else jnp.asarray(leaf)
            dyn.append(arr)
            dyn_specs.append(_spec_for(row, arr.ndim, names, even_axes))
            takes.append([(d, n) for n, d in zip(names, row) if d is not None and n in mesh_axes and n not in even_axes])
            if isinstance(leaf, NamedArray):
                kinds.append(tuple(Axis(a.name, local[a.name]) if a.name in mesh_axes else a for a in leaf.axes))
            else:
                kinds.append(True)
        else:
            kinds.append(leaves_lib.Static(leaf))

    local_plan = _Plan(tuple((n, local[n]) for n in names), plan.default, plan.args, plan.kwargs, plan.chunk_size)
    vmap_names = {n: (n if n not in mesh.axis_names else f"{n}:local") for n in names}

    def frame_for(name: str, local_size: int) -> frames.MapFrame:
        axes = mesh_axes.get(name, ())
        return frames.MapFrame(
            name, sizes[name], vmap_names[name], local_size, mesh_axes=axes, num_shards=shards.get(name, 1)
        )

    out_info: list[Any] = []

    def body(*blocks: Any) -> tuple[Any, ...]:
        blocks = list(blocks)
        for i, todo in enumerate(takes):
            for d, n in todo:
                blocks[i] = _take_local(blocks[i], d, sizes[n], local[n], mesh_axes[n])
        a, k = leaves_lib.join(treedef, kinds, blocks)
        out = map_axes(fn, local_plan, a, k, frame_for=frame_for)
        out_tree, out_kinds, arrays = leaves_lib.split(out)
        # Every output carries the mapped axes in front; keep only the rest, put back below with global sizes.
        out_info[:] = [out_tree, [k[len(names) :] if type(k) is tuple else k for k in out_kinds]]
        return tuple(arrays)

    out_spec = PartitionSpec(*[_one_spec(mesh_axes.get(n)) for n in names])
    mapped = jax.shard_map(body, mesh=mesh, in_specs=tuple(dyn_specs), out_specs=out_spec, check_vma=False)
    out_arrays = mapped(*_reshard_inputs(dyn, dyn_specs, mesh))
    out_tree, out_kinds = out_info
    out_arrays = [_cut_back(arr, names, mesh_axes, sizes, padded, mesh) for arr in out_arrays]
    return leaves_lib.join(out_tree, out_kinds, out_arrays, front=tuple(Axis(n, sizes[n]) for n in names))


def _cut_back(arr, names, mesh_axes, sizes, padded, mesh: Mesh) -> jax.Array:
    """Drop the padding of unevenly split axes (dims ``0..len(names)-1`` of every output)."""
    uneven = [lvl for lvl, n in enumerate(names) if n in mesh_axes and padded[n] != sizes[n]]
    if not uneven:
        return arr
    if _is_explicit(mesh):
        # An Explicit-typed array cannot hold an uneven split: gather those dims first (one all-gather).
        parts = [None if lvl in uneven else _one_spec(mesh_axes.get(n)) for lvl, n in enumerate(names)]
        arr = jax.sharding.reshard(arr, _sharding(mesh, typed_part(PartitionSpec(*parts), mesh, explicit=True)))
    for lvl in uneven:
        arr = jax.lax.slice_in_dim(arr, 0, sizes[names[lvl]], axis=lvl)
    return arr


def _is_explicit(mesh: Mesh) -> bool:
    explicit = jax.sharding.AxisType.Explicit
    return any(t == explicit for t in getattr(mesh, "axis_types", ()))


def _one_spec(axes: tuple[str, ...] | None) -> Any:
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def _reshard_inputs(dyn: list[jax.Array], dyn_specs: list[PartitionSpec], mesh: Mesh) -> list[jax.Array]:
    """On a mesh with Explicit axes, ``shard_map``'s in_specs assert rather than reshard: reshard first."""
    if not _is_explicit(mesh):
        return dyn
    # Only the Explicit axes are resharded here; shard_map reshards Auto axes (of a mixed mesh) itself.
    return [
        jax.sharding.reshard(x, _sharding(mesh, typed_part(s, mesh, explicit=True))) for x, s in zip(dyn, dyn_specs)
    ]


def _sharding(mesh: Any, spec: PartitionSpec) -> Any:
    # Inside jax.jit under jax.set_mesh only the abstract mesh is known: a bare spec refers to it.
    return NamedSharding(mesh, spec) if isinstance(mesh, Mesh) else spec


_jitted_run = eqx.filter_jit(_run)
