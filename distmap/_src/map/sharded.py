"""The mesh lowering: split mapped axes across devices with ``jax.shard_map``, vmap inside each shard.

For each mapped axis that the axis mapping sends to mesh axes, every input the plan maps
along it is split along that dimension over those mesh axes (``in_specs``), and each device
runs the one-device lowering (:func:`.local.run`) on its shard with the same plan. The
vmap axis stands for the device's part and the mesh axes for the rest, so the named
collectives combine both.

The call is a ``jax.jit`` over the arrays and Python scalars (traced, as ``jax.jit`` traces
them); the function, the plan, the lowering and the inputs' layout are its static data,
so it compiles once per distinct structure.

Uneven sizes: an axis of size ``n`` over ``k`` devices is mapped as ``ceil(n / k) * k``
elements, the indices past ``n`` repeating the last element (padding that never makes
NaNs or infs the real data would not, gradients included); collectives mask it.

* An input distmap places itself (a host array, or a ``jax.Array`` not on this mesh) is
  padded where it is placed and split evenly, so each device receives only its share.
* An input already on the mesh (or traced, inside ``jit``) cannot hold an uneven split: it
  arrives whole along that dimension, and each device takes its own slice.
* Outputs keep their true size ``n``. On an Explicit mesh an array cannot be split unevenly
  either, so such an output is gathered first (one all-gather); on an Auto mesh XLA picks the
  layout, and the cut fuses with a consumer inside the same ``jit``.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distmap import errors
from distmap._src import leaves as leaves_lib
from distmap._src.map import frames, local, specs
from distmap._src.map.plan import Plan, StaticKind
from distmap._src.mesh import AxisMapping, as_axis_mapping, current_axis_mapping, current_mesh, typed_part


class Lowering:
    """Where the mapped axes go: the mesh, and for each split axis name its mesh axes."""

    __slots__ = ("mesh", "mesh_axes", "_hash")

    def __init__(self, mesh: Any, mesh_axes: tuple[tuple[str, tuple[str, ...]], ...]):
        self.mesh = mesh
        self.mesh_axes = mesh_axes
        self._hash = hash((mesh, mesh_axes))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Lowering) and (self.mesh, self.mesh_axes) == (other.mesh, other.mesh_axes)

    def __hash__(self) -> int:
        return self._hash

    def axes_of(self, name: str) -> tuple[str, ...]:
        return dict(self.mesh_axes).get(name, ())

    def shards(self, name: str) -> int:
        return math.prod(self.mesh.shape[a] for a in self.axes_of(name))


def resolve(names: Sequence[str], mesh: Any, axis_mapping: Any) -> Lowering | None:
    """The mesh lowering for a map over ``names``, or None when it runs on one device."""
    if mesh is not None and not isinstance(mesh, (Mesh, jax.sharding.AbstractMesh)):
        raise errors.MeshError(f"vmap(mesh=...): expected a jax.sharding.Mesh, got {type(mesh).__name__}.")
    if axis_mapping is not None:
        mapping: AxisMapping | None = as_axis_mapping(axis_mapping)
        unused = sorted({n for n, _ in mapping.rules} - set(names))  # type: ignore[union-attr]
        if unused:
            raise errors.MeshError(
                f"vmap(axis_mapping=...): the mapping names {unused}, but this map is over {tuple(names)}; "
                "an axis mapping given to vmap splits only the mapped axes. Fix the name, or set mappings meant "
                "for the whole program with distmap.axis_mapping(...)."
            )
    else:
        mapping = current_axis_mapping()
    if mapping is None:
        if mesh is None:
            return None
        # A mesh without a mapping splits the named axes that share a mesh axis's name.
        mapping = AxisMapping(tuple((n, (n,)) for n in names if n in mesh.axis_names), ordered=False)
    found = {n: a for n, a in mapping.resolve(names, None, what="map").items() if a}
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


def from_inputs(plan: Plan, leaves: list[Any], mesh: Any) -> Lowering | None:
    """The lowering the inputs already ask for, when no axis mapping splits any mapped axis.

    An input split on the mesh along a mapped axis (by :func:`distmap.shard`, say) says where that
    axis lives: the map is split over those mesh axes, as if the axis mapping said so, and the input
    is used as it is. (Left to one device, a named collective over such an axis would fail inside
    JAX under ``jit``.) The first input split along an axis decides it; inputs laid out otherwise
    are resharded once. Returns None when no input is split along a mapped axis.
    """
    if any(f.mesh_axes for f in frames.current_frames()):
        return None  # inside a map already split over the mesh: the inputs are each device's blocks
    found: dict[str, tuple[str, ...]] = {}
    the_mesh = None
    for i in plan.arrays:
        row = plan.dims[i]
        if row.count(None) == len(row):
            continue  # not mapped: its layout says nothing about the mapped axes
        (arr,) = plan.unwrap(leaves, (i,))
        sharding = _sharding_of(arr)
        if sharding is None:
            continue
        spec = tuple(sharding.spec) + (None,) * (np.ndim(arr) - len(sharding.spec))
        for level, name in enumerate(plan.names):
            d = row[level]
            if d is None or name in found or spec[d] is None:
                continue
            axes = (spec[d],) if isinstance(spec[d], str) else tuple(spec[d])
            if not axes or any(a in v for v in found.values() for a in axes):
                continue
            found[name] = axes
            the_mesh = the_mesh if the_mesh is not None else sharding.mesh
    if not found:
        return None
    if mesh is None:
        mesh = current_mesh()
    if mesh is None or tuple(mesh.axis_names) != tuple(the_mesh.axis_names):
        mesh = the_mesh
    if not isinstance(mesh, Mesh) and current_mesh() is None:
        # Traced without a mesh context, only the abstract mesh of the inputs' type is known.
        raise errors.MeshError(
            f"vmap over {plan.names}: inputs are split along "
            + ", ".join(f"{n!r} over mesh axes {a}" for n, a in found.items())
            + ", but under jax.jit no mesh is set; wrap the call in `with jax.set_mesh(mesh):` or pass "
            "vmap(..., mesh=mesh)."
        )
    return Lowering(mesh, tuple((n, found[n]) for n in plan.names if n in found))


def _sharding_of(arr: Any) -> NamedSharding | None:
    """The ``NamedSharding`` of a concrete array, or of a traced one where its type carries one (Explicit axes)."""
    if _is_tracer(arr):
        try:
            sharding = getattr(jax.typeof(arr), "sharding", None)
        except Exception:  # an aval without sharding (older tracers)
            return None
    else:
        sharding = getattr(arr, "sharding", None)
    if not isinstance(sharding, NamedSharding) or not sharding.mesh.axis_names:
        return None
    if getattr(sharding.mesh, "empty", False):
        return None
    return sharding


class _Static:
    """The static data of the jitted call: compared by value, so equal calls share one compilation.

    ``padded`` holds, per array leaf, the levels at which the leaf arrives already padded
    to a multiple of the shard count (placed by distmap); at the other uneven levels it
    arrives whole and each device takes its slice.
    """

    __slots__ = ("fn_def", "fn_kinds", "chunk_size", "lowering", "plan", "padded", "_hash")

    def __init__(self, fn_def, fn_kinds, chunk_size, lowering: Lowering, plan: Plan, padded):
        self.fn_def = fn_def
        self.fn_kinds: tuple[Any, ...] = fn_kinds
        self.chunk_size = chunk_size
        self.lowering = lowering
        self.plan = plan
        self.padded: tuple[frozenset[int], ...] = padded
        self._hash = hash(self._key())

    def _key(self) -> tuple:
        return (self.fn_def, self.fn_kinds, self.chunk_size, self.lowering, self.plan, self.padded)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self._hash == other._hash and self._key() == other._key()

    def __hash__(self) -> int:
        return self._hash

    def fn(self, arrays: Sequence[Any]) -> Callable[..., Any]:
        """The mapped function back, its arrays (an equinox Module's, a closure's) from the traced ``arrays``."""
        it = iter(arrays)
        kind, treedef = self.fn_def[0], self.fn_def[-1]
        values = jax.tree_util.tree_unflatten(treedef, [next(it) if k is True else k.value for k in self.fn_kinds])
        if kind == "pytree":
            return values
        _, code, fn_globals, name, _ = self.fn_def
        defaults, kwdefaults, cells = values
        out = types.FunctionType(code, fn_globals.value, name, defaults, tuple(types.CellType(c) for c in cells))
        out.__kwdefaults__ = kwdefaults
        return out


def _function_parts(fn: Callable[..., Any]) -> tuple[tuple, tuple[Any, ...], list[Any]]:
    """``fn`` as jit data: ``(structure, leaf kinds, arrays)``; the arrays are traced, the rest is static.

    An equinox Module is a pytree: its arrays are traced. A plain Python function is taken apart
    into its code, defaults and closure, so that a closure over arrays (``lambda v: v * w``) traces
    ``w`` instead of baking it in, and a lambda built afresh for each call (the same code, the same
    captured values) reuses the compilation. Its globals are read when it is traced, as under
    ``jax.jit``: a global rebound later is not seen by calls already compiled.
    """
    if type(fn) is types.FunctionType:
        try:
            cells = tuple(c.cell_contents for c in fn.__closure__ or ())
        except ValueError:  # an empty cell (a name bound later in the enclosing scope): keep fn whole
            cells = None
        if cells is not None:
            leaves, treedef = jax.tree_util.tree_flatten((fn.__defaults__, fn.__kwdefaults__, cells))
            kinds = tuple(True if leaves_lib.is_array(x) else StaticKind(x) for x in leaves)
            arrays = [x for x, k in zip(leaves, kinds) if k is True]
            return ("function", fn.__code__, StaticKind(fn.__globals__), fn.__name__, treedef), kinds, arrays
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    kinds = tuple(True if leaves_lib.is_array(x) else StaticKind(x) for x in leaves)
    return ("pytree", treedef), kinds, [x for x, k in zip(leaves, kinds) if k is True]


class _StaticOut:
    """A non-array output leaf, carried out of the ``jit`` in the output structure."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


jax.tree_util.register_pytree_node(_StaticOut, lambda s: ((), s.value), lambda value, _: _StaticOut(value))


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


def call(fn: Callable[..., Any], chunk_size: int | None, lowering: Lowering, plan: Plan, leaves: list[Any]) -> Any:
    """Run the map on the mesh: placed there first when called eagerly, always as one jitted call.

    Already traced (inside ``jit``, or under an eager ``vmap``/``grad``), the call nests in
    that trace: a ``reshard`` (Explicit meshes) evaluated eagerly under ``vmap`` would fail.
    """
    values = plan.unwrap(leaves, plan.traced)
    traced = any(_is_tracer(v) for v in values)
    padded: list[frozenset[int]] = [frozenset()] * len(plan.arrays)
    if not traced:
        values, padded = _place(plan, lowering, values, leaves)
    # The function is data too: its arrays (an equinox Module's, a closure's) are traced, the rest is static.
    fn_def, fn_kinds, fn_arrays = _function_parts(fn)
    static = _Static(fn_def, fn_kinds, chunk_size, lowering, plan, tuple(padded))
    watch = sys.modules.get("distmap._src.progress")  # loaded by distmap.distributed, which starts the watch
    if watch is not None and _spans_processes(lowering.mesh):
        # Every rank launches the same multi-process computations in the same order; the progress
        # watch (when a launcher turned it on) compares what each launched. The key's repr must be
        # the same on every rank: names, sizes, shapes and dtypes only, no object addresses.
        watch.note("vmap", _launch_key(fn, plan, lowering, values))
    if traced:
        out = _jitted_run(static, fn_arrays, *values)
    else:
        try:
            context = jax.set_mesh(lowering.mesh)
        except ValueError:
            # Under a transformation whose tracers fn closes over (grad with respect to captured
            # parameters, say) no mesh context can be entered; the call nests in that trace.
            out = _jitted_run(static, fn_arrays, *values)
        else:
            with context:
                out = _jitted_run(static, fn_arrays, *values)
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, _StaticOut) else x, out, is_leaf=lambda x: isinstance(x, _StaticOut)
    )


def _spans_processes(mesh: Any) -> bool:
    # Inside jit only the abstract mesh is known, which does not say; then any multi-process run counts.
    return mesh.is_multi_process if isinstance(mesh, Mesh) else jax.process_count() > 1


def _launch_key(fn: Any, plan: Plan, lowering: Lowering, values: Sequence[Any]) -> tuple:
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    shapes = tuple((tuple(np.shape(v)), str(getattr(v, "dtype", type(v).__name__))) for v in values)
    return (name, plan.names, plan.sizes, lowering.mesh_axes, shapes)


def _split_levels(plan: Plan, lowering: Lowering) -> list[tuple[int, str, tuple[str, ...], int]]:
    """``(level, name, mesh axes, shards)`` of each level the lowering splits."""
    out = []
    for level, name in enumerate(plan.names):
        axes = lowering.axes_of(name)
        if axes:
            out.append((level, name, axes, lowering.shards(name)))
    return out


def _place(plan: Plan, lowering: Lowering, values: list[Any], leaves: list[Any]):
    """Put arrays that are not yet on the mesh on it, split as the map wants, uneven axes padded first.

    Host (numpy) arrays and ``jax.Array`` s held elsewhere (one device, another mesh) are placed
    (a ``jit`` would refuse committed arrays on other devices). Arrays already on this mesh are
    left as they are: in the map's layout they are used without a copy, in any other layout
    the map's ``jit`` reshards them once.
    """
    mesh = lowering.mesh
    split = _split_levels(plan, lowering)
    multi_process = _spans_processes(mesh)
    padded: list[frozenset[int]] = []
    out = list(values)
    array_pos = {i: j for j, i in enumerate(plan.arrays)}
    for v, i in enumerate(plan.traced):
        if i not in array_pos:
            continue  # a Python scalar
        arr = values[v]
        sharding = getattr(arr, "sharding", None)
        if isinstance(sharding, NamedSharding) and sharding.mesh == mesh:
            padded.append(frozenset())
            continue
        row = plan.dims[i]
        if multi_process and (isinstance(arr, jax.Array) or any(d is not None for d in row)):
            # Each process holds its own such array: placing it as if it were the global value
            # would silently mix different data (a host array) or fail inside JAX (a local jax.Array).
            raise errors.MeshError(
                f"vmap over {plan.names}: {_path(plan, leaves, i)} is a process-local array, but the mesh "
                f"{dict(mesh.shape)} spans {jax.process_count()} processes. Build global inputs with "
                "distmap.distributed.host_local_to_global (each process passing its own rows), or distmap.shard."
            )
        pads = set()
        for level, _, _, k in split:
            d = row[level]
            n = plan.sizes[level]
            if d is not None and n % k:
                arr = _pad_edge(arr, d, n, -(-n // k) * k)
                pads.add(level)
        spec = _spec_for(row, np.ndim(arr), plan, lowering, range(len(plan.names)))
        out[v] = jax.device_put(arr, NamedSharding(mesh, spec))
        padded.append(frozenset(pads))
    return out, padded


def _path(plan: Plan, leaves: list[Any], i: int) -> str:
    args, kwargs = jax.tree_util.tree_unflatten(plan.treedef, leaves)
    return specs.leaf_paths(args, kwargs)[i]


def _pad_edge(arr: Any, dim: int, n: int, padded: int) -> Any:
    """``arr`` with dimension ``dim`` extended from ``n`` to ``padded`` by repeating its last element."""
    idx = np.minimum(np.arange(padded), n - 1)
    if isinstance(arr, jax.Array):
        return jnp.take(arr, idx, axis=dim)
    return np.take(np.asarray(arr), idx, axis=dim)


def _one_spec(axes: tuple[str, ...] | None) -> Any:
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else axes


def _spec_for(row, ndim: int, plan: Plan, lowering: Lowering, levels) -> PartitionSpec:
    """The spec splitting the dimensions of ``row`` at ``levels`` over their mesh axes."""
    parts: list[Any] = [None] * ndim
    for level in levels:
        d = row[level]
        axes = lowering.axes_of(plan.names[level])
        if d is not None and axes:
            parts[d] = _one_spec(axes)
    return PartitionSpec(*parts)


def _take_local(block: jax.Array, dim: int, size: int, local_size: int, mesh_axes: tuple[str, ...]) -> jax.Array:
    """This device's ``local_size`` elements of a dimension held whole, indices past ``size`` clamped to its end."""
    start = jax.lax.axis_index(mesh_axes) * local_size
    idx = jnp.minimum(start + jnp.arange(local_size), size - 1)
    return jnp.take(block, idx, axis=dim)


def _run(static: _Static, fn_arrays: list[Any], *values: Any) -> Any:
    plan, lowering = static.plan, static.lowering
    fn = static.fn(fn_arrays)
    mesh = lowering.mesh
    names = plan.names
    split = {level: (axes, k) for level, _, axes, k in _split_levels(plan, lowering)}
    local_sizes = tuple(-(-n // split[l][1]) if l in split else n for l, n in enumerate(plan.sizes))
    even = {l for l in split if plan.sizes[l] % split[l][1] == 0}

    array_pos = {i: j for j, i in enumerate(plan.arrays)}
    in_specs, takes = [], []
    for v, i in enumerate(plan.traced):
        if i not in array_pos:
            in_specs.append(PartitionSpec())
            takes.append(())
            continue
        row, pads = plan.dims[i], static.padded[array_pos[i]]
        ready = [l for l in split if l in even or l in pads]
        in_specs.append(_spec_for(row, np.ndim(values[v]), plan, lowering, ready))
        takes.append(tuple((row[l], l) for l in split if row[l] is not None and l not in ready))

    vmap_names = {n: (n if n not in mesh.axis_names else f"{n}:local") for n in names}

    def frame_for(level: int, size: int) -> frames.MapFrame:
        axes, k = split.get(level, ((), 1))
        name = names[level]
        return frames.MapFrame(name, plan.sizes[level], vmap_names[name], size, mesh_axes=axes, num_shards=k)

    out_info: list[Any] = []

    def body(*blocks: Any) -> tuple[Any, ...]:
        blocks = list(blocks)
        for v, todo in enumerate(takes):
            for d, l in todo:
                blocks[v] = _take_local(blocks[v], d, plan.sizes[l], local_sizes[l], split[l][0])
        leaves = [k.value if isinstance(k, StaticKind) else None for k in plan.kinds]
        for v, i in enumerate(plan.traced):
            leaves[i] = blocks[v]
        arrays = [leaves[i] for i in plan.arrays]
        out = local.run(
            fn, plan, arrays, leaves, sizes=local_sizes, chunk_size=static.chunk_size, frame_for=frame_for
        )
        out_tree, out_kinds, out_arrays = leaves_lib.split(out)
        # Every output carries the mapped axes in front; keep only the rest, put back below with global sizes.
        out_info[:] = [out_tree, [k[len(names) :] if type(k) is tuple else k for k in out_kinds]]
        return tuple(out_arrays)

    out_spec = PartitionSpec(*[_one_spec(split[l][0]) if l in split else None for l in range(len(names))])
    mapped = jax.shard_map(body, mesh=mesh, in_specs=tuple(in_specs), out_specs=out_spec, check_vma=False)
    inputs = _reshard_inputs(list(values), in_specs, mesh)
    # Runtime hook (distmap/_src/collective_check.py, loaded by distmap.distributed): when the collective check
    # is on, it adds to this trace a count and cross-rank comparison of this map that runs at every execution,
    # and sequences the inputs after it. Contract: inputs = traced_map(key, mesh, inputs), once per traced map
    # over a multi-process mesh, with the progress key; off, it returns the inputs and adds nothing.
    check = sys.modules.get("distmap._src.collective_check")
    if check is not None and _spans_processes(mesh):
        inputs = check.traced_map(_launch_key(fn, plan, lowering, values), mesh, inputs)
    out_arrays = mapped(*inputs)
    out_tree, out_kinds = out_info
    uneven = [l for l in split if l not in even]
    out_arrays = [_cut_back(a, plan, split, uneven, mesh) for a in out_arrays]
    out_kinds = [_StaticOutKind(k.value) if isinstance(k, leaves_lib.Static) else k for k in out_kinds]
    return leaves_lib.join(out_tree, out_kinds, out_arrays, front=plan.front())


class _StaticOutKind(leaves_lib.Static):
    """A Static kind whose value comes out wrapped, so ``jit`` carries it in the output structure."""

    __slots__ = ()

    def __init__(self, value: Any):
        super().__init__(_StaticOut(value))


def _cut_back(arr: jax.Array, plan: Plan, split, uneven: list[int], mesh: Any) -> jax.Array:
    """Drop the padding of unevenly split levels (dims ``0..levels-1`` of every output)."""
    if not uneven:
        return arr
    if _is_explicit(mesh):
        # An Explicit-typed array cannot hold an uneven split: gather those dims first (one all-gather).
        parts = [None if l in uneven else (_one_spec(split[l][0]) if l in split else None) for l in range(len(plan.names))]
        arr = jax.sharding.reshard(arr, _sharding(mesh, typed_part(PartitionSpec(*parts), mesh, explicit=True)))
    for l in uneven:
        arr = jax.lax.slice_in_dim(arr, 0, plan.sizes[l], axis=l)
    return arr


def _is_explicit(mesh: Any) -> bool:
    explicit = jax.sharding.AxisType.Explicit
    return any(t == explicit for t in getattr(mesh, "axis_types", ()))


def _reshard_inputs(values: list[Any], in_specs: list[PartitionSpec], mesh: Any) -> list[Any]:
    """On a mesh with Explicit axes, ``shard_map``'s in_specs assert rather than reshard: reshard first."""
    if not _is_explicit(mesh):
        return values
    # Only the Explicit axes are resharded here; shard_map reshards Auto axes (of a mixed mesh) itself.
    return [
        jax.sharding.reshard(x, _sharding(mesh, typed_part(s, mesh, explicit=True))) for x, s in zip(values, in_specs)
    ]


def _sharding(mesh: Any, spec: PartitionSpec) -> Any:
    # Inside jax.jit under jax.set_mesh only the abstract mesh is known: a bare spec refers to it.
    return NamedSharding(mesh, spec) if isinstance(mesh, Mesh) else spec


_jitted_run = jax.jit(_run, static_argnums=0)
