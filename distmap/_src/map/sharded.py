"""The mesh lowering: split mapped axes across devices with ``jax.shard_map``, vmap inside each shard.

For each mapped axis that the axis mapping sends to mesh axes, every input the plan maps
along it is split along that dimension over those mesh axes (``in_specs``), and each device
runs the one-device lowering (:func:`.local.run`) on its shard with the same plan. The vmap
axis stands for the device's part and the mesh axes for the rest, so the named collectives
combine both.

**Compilation, as ``jax.jit``.** Called outside any trace, a mapped function compiles like
``jax.jit(f)``: each function ``distmap.vmap`` returns keeps its own cache (a :class:`Compiled`),
keyed by the plan, the lowering, the inputs' layout and the static rest of ``fn``; arrays and
Python scalars are traced, so new values never recompile. A fresh ``distmap.vmap(...)`` (or a
fresh lambda) traces again, as a fresh ``jax.jit`` would. Inside an enclosing ``jax.jit`` the map
adds no cache of its own: it is traced into the enclosing computation, whose own cache decides.
Under an eager ``jax.grad`` or ``jax.vmap``, which caches nothing, the mapped function's own
cache serves, keyed as for an eager call.

**fn's arrays are inputs.** ``fn`` is taken apart (:mod:`.fn_parts`): the arrays of a Module,
a ``partial``, a closure or the globals it reads enter the ``shard_map`` as replicated inputs,
never closed over, so weights that live on an Explicit mesh work and are never baked in.

**Uneven sizes** (:class:`~.split.Split` owns the rule): an axis of size ``n`` over ``k`` devices
is mapped as ``ceil(n / k) * k`` elements, the padding repeating the last element.

* An input distmap places itself (a host array, or a ``jax.Array`` not on this mesh) is
  padded where it is placed and split evenly, so each device receives only its share.
* An input already on the mesh (or traced) cannot hold an uneven split: it arrives whole
  along that dimension, and each device takes its own slice.
* Outputs keep their true size ``n``. On an Explicit mesh an array cannot be split unevenly
  either, so such an output is gathered first (one all-gather); on an Auto mesh XLA picks the
  layout, and the cut fuses with a consumer inside the same ``jit``.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distmap import errors
from distmap._src import jax_compat
from distmap._src import leaves as leaves_lib
from distmap._src.map import fn_parts, frames, local, specs
from distmap._src.map.plan import Plan, StaticKind
from distmap._src.map.split import Split
from distmap._src.mesh import (
    AxisMapping,
    as_axis_mapping,
    current_axis_mapping,
    current_mesh,
    entry_axes,
    has_explicit_axes,
    spec_entry,
    typed_part,
)


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

    def split(self, name: str, size: int) -> Split:
        """How the mapped axis ``name`` of ``size`` elements is laid out on this mesh."""
        axes = self.axes_of(name)
        return Split(size, math.prod(self.mesh.shape[a] for a in axes), axes)


def check_mapping_keys(mapping: AxisMapping, names: Sequence[str], what: str, hint: str) -> None:
    """An axis mapping given to one call may only name what that call splits (a typo is not ignored)."""
    unused = sorted({n for n, _ in mapping.rules} - set(names))
    if unused:
        raise errors.MeshError(
            f"{what}(axis_mapping=...): the mapping names {unused}, but {hint}. Fix the name, or set mappings "
            "meant for the whole program with distmap.axis_mapping(...)."
        )


def resolve(names: Sequence[str], mesh: Any, axis_mapping: Any) -> Lowering | None:
    """The mesh lowering for a map over ``names``, or None when it runs on one device."""
    if mesh is not None and not isinstance(mesh, (Mesh, jax.sharding.AbstractMesh)):
        raise errors.MeshError(f"vmap(mesh=...): expected a jax.sharding.Mesh, got {type(mesh).__name__}.")
    mapping: AxisMapping | None
    if axis_mapping is not None:
        mapping = as_axis_mapping(axis_mapping)
        check_mapping_keys(
            mapping, names, "vmap", f"this map is over {tuple(names)}; an axis mapping given to vmap splits only the mapped axes"
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
    for leaf in plan.unwrap(leaves, plan.arrays):
        if _on_a_mesh(leaf):
            break
    else:
        return None  # the common case, decided without a closer look
    found: dict[str, tuple[str, ...]] = {}
    the_mesh = None
    for i in plan.arrays:
        row = plan.dims[i]
        assert row is not None  # an array leaf has its row of dims
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
            axes = entry_axes(spec[d])
            if not axes or any(a in v for v in found.values() for a in axes):
                continue
            found[name] = axes
            the_mesh = the_mesh if the_mesh is not None else sharding.mesh
    if not found:
        return None
    assert the_mesh is not None  # set with the first entry of found
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


def _on_a_mesh(arr: Any) -> bool:
    """Whether ``arr`` is laid out on a mesh at all (a quick look, before :func:`_sharding_of`'s closer one)."""
    if _is_tracer(arr):
        mesh = getattr(getattr(jax.typeof(arr), "sharding", None), "mesh", None)
        return mesh is not None and not getattr(mesh, "empty", False)
    return type(getattr(arr, "sharding", None)) is NamedSharding


def _sharding_of(arr: Any) -> NamedSharding | None:
    """The ``NamedSharding`` of a concrete array, or of a traced one where its type carries one (Explicit axes)."""
    if _is_tracer(arr):
        try:
            sharding = getattr(jax.typeof(arr), "sharding", None)
        except Exception:  # noqa: BLE001 - an aval without sharding (older tracers)
            return None
    else:
        sharding = getattr(arr, "sharding", None)
    if not isinstance(sharding, NamedSharding) or not sharding.mesh.axis_names:
        return None
    if getattr(sharding.mesh, "empty", False):
        return None
    return sharding


def _is_tracer(x: Any) -> bool:
    return isinstance(x, jax.core.Tracer)


class _Static:
    """The static data of one lowered call: equal statics share a trace.

    ``padded`` holds, per array leaf, the levels at which the leaf arrives already padded to a
    multiple of the shard count (placed by distmap); at the other uneven levels it arrives
    whole and each device takes its slice. ``scalars_traced`` says whether Python scalars are
    inputs (a jitted call) or fixed values (traced inline into an enclosing computation).
    """

    __slots__ = ("skeleton", "chunk_size", "lowering", "plan", "padded", "scalars_traced", "label", "_hash")

    def __init__(self, skeleton, chunk_size, lowering: Lowering, plan: Plan, padded, scalars_traced: bool, label: str):
        self.label = label  # fn as the runtime's launch keys name it (not compared: one mapped function, one label)
        self.skeleton: fn_parts.Skeleton = skeleton
        self.chunk_size = chunk_size
        self.lowering = lowering
        self.plan = plan
        self.padded: tuple[frozenset[int], ...] = padded
        self.scalars_traced = scalars_traced
        self._hash = hash(self._key())

    def _key(self) -> tuple:
        return (self.skeleton, self.chunk_size, self.lowering, self.plan, self.padded, self.scalars_traced)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Static) and self._hash == other._hash and self._key() == other._key()

    def __hash__(self) -> int:
        return self._hash


class Compiled:
    """The compilation cache of one mapped function, as ``jax.jit(f)`` keeps one per ``f``.

    Its ``jax.jit`` wraps a function made for it alone, so no other mapped function can ever
    hit its traces (JAX's caches key on the function object).
    """

    __slots__ = ("jitted", "after_trace", "traces")

    def __init__(self) -> None:
        def run(static: _Static, fn_arrays: list[Any], values: list[Any]) -> Any:
            self.traces += 1
            return _run(static, fn_arrays, values, None)

        self.jitted = jax.jit(run, static_argnums=0)
        self.traces = 0
        # What fn changed in the state it reads while it was traced (a trace counter, a log it appends to)
        # is trace-time behaviour, as under jax.jit: the state it left maps to the trace that left it.
        self.after_trace: dict[fn_parts.Skeleton, fn_parts.Skeleton] = {}

    def run(self, static: _Static, fn_arrays: list[Any], values: list[Any], fn: Any, statics: list[Any]) -> Any:
        """``jitted``, noting the state ``fn`` leaves when this call traces it."""
        traces = self.traces
        out = self.jitted(static, fn_arrays, values)
        if self.traces != traces:
            after, _ = fn_parts.take_apart(fn, *statics)
            if after != static.skeleton and len(self.after_trace) < 1024:
                self.after_trace[after] = static.skeleton
        return out


class _StaticOut:
    """A non-array output leaf, carried out of the ``jit`` in the output structure."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value


jax.tree_util.register_pytree_node(_StaticOut, lambda s: ((), s.value), lambda value, _: _StaticOut(value))


def call(
    fn: Callable[..., Any], chunk_size: int | None, lowering: Lowering, plan: Plan, leaves: list[Any], compiled: Compiled
) -> Any:
    """Run the map on the mesh: with ``compiled``'s cache, or traced inline into an enclosing ``jax.jit``."""
    # fn's arrays, and those of the objects passed as static arguments (their attributes are read in the trace).
    statics = [k.value for k in plan.kinds if isinstance(k, StaticKind)]
    skeleton, fn_arrays = fn_parts.take_apart(fn, *statics)
    skeleton = compiled.after_trace.get(skeleton, skeleton)
    values = plan.unwrap(leaves, plan.traced)
    label = _label(fn)
    traced = jax_compat.under_trace()
    watch = sys.modules.get("distmap._src.progress")  # loaded by distmap.distributed, which starts the watch
    if watch is not None and _spans_processes(lowering.mesh):
        # Every rank launches the same multi-process computations in the same order; the progress
        # watch (when a launcher turned it on) compares what each launched. The key's repr must be
        # the same on every rank: names, sizes, shapes and dtypes only, no object addresses.
        watch.note("vmap", _launch_key(label, plan, lowering, values))
    if traced and jax_compat.staging():
        # Inside jax.jit (or a loop body): no cache of ours, the enclosing jit owns caching. A jit made for
        # this call alone is inlined into it; Python scalars stay the values they are, as on one device.
        static = _Static(skeleton, chunk_size, lowering, plan, (frozenset(),) * len(plan.arrays), False, label)
        run = jax.jit(lambda fa, vs: _run(static, fa, vs, leaves), inline=True)
        out = run(fn_arrays, plan.unwrap(leaves, plan.arrays))
    elif traced:
        # Under an eager grad or vmap (nothing stages the call, so nothing else would cache it): this
        # mapped function's own cache, with the same key as an eager call (fn's parts are read afresh).
        # Traced inputs cannot be placed, nor a mesh context entered (jax.set_mesh refuses inside a trace):
        # they arrive as they are. (jax.grad of an output typed on an Explicit mesh needs jax.set_mesh around
        # it anyway: JAX seeds the cotangent with a reshard onto that mesh.)
        static = _Static(skeleton, chunk_size, lowering, plan, (frozenset(),) * len(plan.arrays), True, label)
        out = compiled.run(static, fn_arrays, values, fn, statics)
    else:
        values, padded = _place(plan, lowering, values, leaves)
        fn_arrays = _place_replicated(fn_arrays, lowering.mesh)
        static = _Static(skeleton, chunk_size, lowering, plan, padded, True, label)
        with _mesh_context(lowering.mesh):
            out = compiled.run(static, fn_arrays, values, fn, statics)
    return jax.tree_util.tree_map(
        lambda x: x.value if isinstance(x, _StaticOut) else x, out, is_leaf=lambda x: isinstance(x, _StaticOut)
    )


class _NoContext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _mesh_context(mesh: Any) -> Any:
    """``jax.set_mesh(mesh)`` for a jitted call, unless that mesh is current already."""
    if current_mesh() is mesh or not isinstance(mesh, Mesh):
        return _NoContext()
    return jax.set_mesh(mesh)


def _spans_processes(mesh: Any) -> bool:
    # Inside jit only the abstract mesh is known, which does not say; then any multi-process run counts.
    return mesh.is_multi_process if isinstance(mesh, Mesh) else jax.process_count() > 1


def _label(fn: Any) -> str:
    """``fn`` by its name and where its code is (file name and line: the same on every rank of one program,
    wherever each host keeps its copy), so that two lambdas of the same shapes are told apart."""
    name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return name if code is None else f"{name} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"


def _launch_key(label: str, plan: Plan, lowering: Lowering, values: Sequence[Any]) -> tuple:
    shapes = tuple((tuple(np.shape(v)), str(getattr(v, "dtype", type(v).__name__))) for v in values)
    return (label, plan.names, plan.sizes, lowering.mesh_axes, shapes)


def _splits(plan: Plan, lowering: Lowering) -> dict[int, Split]:
    """The :class:`Split` of each level the lowering splits over mesh axes."""
    out = {}
    for level, name in enumerate(plan.names):
        if lowering.axes_of(name):
            out[level] = lowering.split(name, plan.sizes[level])
    return out


def _place(plan: Plan, lowering: Lowering, values: list[Any], leaves: list[Any]):
    """Put arrays that are not yet on the mesh on it, split as the map wants, uneven axes padded first.

    Host (numpy) arrays and ``jax.Array`` s held elsewhere (one device, another mesh) are placed
    (a ``jit`` would refuse committed arrays on other devices). Arrays already on this mesh are
    left as they are: in the map's layout they are used without a copy, in any other layout
    the map's ``jit`` reshards them once.
    """
    mesh = lowering.mesh
    splits = _splits(plan, lowering)
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
        assert row is not None  # an array leaf has its row of dims
        if multi_process and (isinstance(arr, jax.Array) or any(d is not None for d in row)):
            # Each process holds its own such array: placing it as if it were the global value
            # would silently mix different data (a host array) or fail inside JAX (a local jax.Array).
            raise errors.MeshError(
                f"vmap over {plan.names}: {_path(plan, leaves, i)} is a process-local array, but the mesh "
                f"{dict(mesh.shape)} spans {jax.process_count()} processes. Build global inputs with "
                "distmap.distributed.host_local_to_global (each process passing its own rows), or distmap.shard."
            )
        pads = set()
        for level, split in splits.items():
            d = row[level]
            if d is not None and split.padded:
                arr = split.pad(arr, d)
                pads.add(level)
        spec = _spec_for(row, np.ndim(arr), plan, lowering, range(len(plan.names)))
        out[v] = jax.device_put(arr, NamedSharding(mesh, spec))
        padded.append(frozenset(pads))
    return out, tuple(padded)


def _place_replicated(arrays: list[Any], mesh: Mesh) -> list[Any]:
    """``fn``'s arrays that live on other devices, replicated onto ``mesh`` (a ``jit`` refuses them there)."""
    out = []
    multi_process = _spans_processes(mesh)
    for a in arrays:
        sharding = getattr(a, "sharding", None)
        if isinstance(a, jax.Array):
            if not (isinstance(sharding, NamedSharding) and sharding.mesh == mesh) and (a.committed or multi_process):
                a = jax.device_put(a, NamedSharding(mesh, PartitionSpec()))
        elif multi_process:  # a host array: the same on every process, as fn is
            a = jax.device_put(a, NamedSharding(mesh, PartitionSpec()))
        out.append(a)
    return out


def _path(plan: Plan, leaves: list[Any], i: int) -> str:
    args, kwargs = jax.tree_util.tree_unflatten(plan.treedef, leaves)
    return specs.leaf_paths(args, kwargs)[i]


def _spec_for(row, ndim: int, plan: Plan, lowering: Lowering, levels) -> PartitionSpec:
    """The spec splitting the dimensions of ``row`` at ``levels`` over their mesh axes."""
    parts: list[Any] = [None] * ndim
    for level in levels:
        d = row[level]
        axes = lowering.axes_of(plan.names[level])
        if d is not None and axes:
            parts[d] = spec_entry(axes)
    return PartitionSpec(*parts)


def _run(static: _Static, fn_arrays: list[Any], values: list[Any], fixed: list[Any] | None) -> Any:
    """The map as one ``jax.shard_map`` (traced by ``Compiled`` or into an enclosing computation).

    ``values`` are the leaves at ``plan.traced`` (a jitted call) or at ``plan.arrays`` (inline,
    where ``fixed`` holds the call's leaves and Python scalars keep their values).
    """
    plan, lowering = static.plan, static.lowering
    mesh = lowering.mesh
    names = plan.names
    splits = _splits(plan, lowering)
    local_sizes = tuple(splits[l].local_size if l in splits else n for l, n in enumerate(plan.sizes))
    inputs = plan.traced if static.scalars_traced else plan.arrays

    array_pos = {i: j for j, i in enumerate(plan.arrays)}
    in_specs: list[PartitionSpec] = []
    takes: list[tuple[tuple[int, Split], ...]] = []
    for v, i in enumerate(inputs):
        if i not in array_pos:
            in_specs.append(PartitionSpec())  # a traced Python scalar
            takes.append(())
            continue
        row, pads = plan.dims[i], static.padded[array_pos[i]]
        assert row is not None  # an array leaf has its row of dims
        ready = [l for l, s in splits.items() if not s.padded or l in pads]
        in_specs.append(_spec_for(row, np.ndim(values[v]), plan, lowering, ready))
        takes.append(tuple((d, s) for l, s in splits.items() if (d := row[l]) is not None and l not in ready))
    fn_specs = [PartitionSpec()] * len(fn_arrays)  # fn sees its arrays whole on every device

    vmap_names = {n: (n if n not in mesh.axis_names else f"{n}:local") for n in names}

    def frame_for(level: int, size: int) -> frames.MapFrame:
        split = splits.get(level) or Split(plan.sizes[level])
        return frames.MapFrame(names[level], split, vmap_names[names[level]])

    out_info: list[Any] = []
    base = fixed if fixed is not None else [k.value if isinstance(k, StaticKind) else None for k in plan.kinds]

    def body(*blocks: Any) -> tuple[Any, ...]:
        data, fn_blocks = list(blocks[: len(inputs)]), list(blocks[len(inputs) :])
        for v, todo in enumerate(takes):
            for d, split in todo:
                data[v] = split.take_local(data[v], d)
        leaves = list(base)
        for v, i in enumerate(inputs):
            leaves[i] = data[v]
        arrays = [leaves[i] for i in plan.arrays]
        with static.skeleton.installed(fn_blocks) as fn:
            out = local.run(fn, plan, arrays, leaves, sizes=local_sizes, chunk_size=static.chunk_size,
                            frame_for=frame_for)
        out_tree, out_kinds, out_arrays = leaves_lib.split(out)
        # Every output carries the mapped axes in front; keep only the rest, put back below with global sizes.
        out_info[:] = [out_tree, [k[len(names) :] if type(k) is tuple else k for k in out_kinds]]
        return tuple(out_arrays)

    out_spec = PartitionSpec(*[spec_entry(splits[l].mesh_axes) if l in splits else None for l in range(len(names))])
    mapped = jax.shard_map(
        body, mesh=mesh, in_specs=tuple(in_specs + fn_specs), out_specs=out_spec, check_vma=False
    )
    operands = _reshard_inputs(list(values) + list(fn_arrays), in_specs + fn_specs, mesh)
    # Runtime hook (distmap/_src/collective_check.py, loaded by distmap.distributed): when the collective check
    # is on, it adds to this trace a count and cross-rank comparison of this map that runs at every execution,
    # and sequences the inputs after it. Contract: inputs = traced_map(key, mesh, inputs), once per traced map
    # over a multi-process mesh, with the progress key; off, it returns the inputs and adds nothing.
    check = sys.modules.get("distmap._src.collective_check")
    if check is not None and _spans_processes(mesh):
        operands = check.traced_map(_launch_key(static.label, plan, lowering, values), mesh, operands)
    out_arrays: Sequence[Any] = mapped(*operands)
    out_tree, out_kinds = out_info
    uneven = [l for l, s in splits.items() if s.padded]
    out_arrays = [_cut_back(a, splits, uneven, mesh, len(names)) for a in out_arrays]
    out_kinds = [_StaticOutKind(k.value) if isinstance(k, leaves_lib.Static) else k for k in out_kinds]
    return leaves_lib.join(out_tree, out_kinds, out_arrays, front=plan.front())


class _StaticOutKind(leaves_lib.Static):
    """A Static kind whose value comes out wrapped, so ``jit`` carries it in the output structure."""

    __slots__ = ()

    def __init__(self, value: Any):
        super().__init__(_StaticOut(value))


def _cut_back(arr: jax.Array, splits: dict[int, Split], uneven: list[int], mesh: Any, levels: int) -> jax.Array:
    """Drop the padding of unevenly split levels (dims ``0..levels-1`` of every output)."""
    if not uneven:
        return arr
    if has_explicit_axes(mesh):
        # An Explicit-typed array cannot hold an uneven split: gather those dims first (one all-gather).
        parts = [None if l in uneven else (spec_entry(splits[l].mesh_axes) if l in splits else None) for l in range(levels)]
        arr = jax.sharding.reshard(arr, _sharding(mesh, typed_part(PartitionSpec(*parts), mesh, explicit=True)))
    for l in uneven:
        arr = splits[l].cut(arr, l)
    return arr


def _reshard_inputs(values: list[Any], in_specs: list[PartitionSpec], mesh: Any) -> list[Any]:
    """On a mesh with Explicit axes, ``shard_map``'s in_specs assert rather than reshard: reshard first."""
    if not has_explicit_axes(mesh):
        return values
    # Only the Explicit axes are resharded here; shard_map reshards Auto axes (of a mixed mesh) itself.
    return [
        jax.sharding.reshard(x, _sharding(mesh, typed_part(s, mesh, explicit=True))) for x, s in zip(values, in_specs)
    ]


def _sharding(mesh: Any, spec: PartitionSpec) -> Any:
    # Inside jax.jit under jax.set_mesh only the abstract mesh may be known: a bare spec refers to it.
    return NamedSharding(mesh, spec) if isinstance(mesh, Mesh) else spec
