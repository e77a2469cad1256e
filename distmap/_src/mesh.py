"""Axis mappings and meshes: which mesh axes each named axis is split over.

An axis mapping sends a named axis to one mesh axis or a tuple of them
(``{"batch": ("replica", "data")}``), or is an ordered list of rules
``[("batch", "data"), ("batch", "replica"), ...]`` where, per array, the first rule
whose mesh axes are still free wins. ``distmap.axis_mapping(...)`` makes one current.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distmap import errors
from distmap._src import jax_compat
from distmap._src.named import NamedArray

MeshAxes = Union[str, Sequence[str], None]
AxisMappingLike = Union[Mapping[str, MeshAxes], Sequence[tuple[str, MeshAxes]]]


class AxisMapping:
    """A checked axis mapping: ``rules`` in order, each ``(name, mesh axes)``; ``ordered`` for rule lists.

    Build one with :func:`as_axis_mapping`; every function that takes a mapping accepts the raw forms too.
    """

    __slots__ = ("rules", "ordered")

    def __init__(self, rules: tuple[tuple[str, tuple[str, ...]], ...], ordered: bool):
        self.rules = rules
        self.ordered = ordered

    def __repr__(self) -> str:
        return f"AxisMapping({list(self.rules) if self.ordered else dict(self.rules)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AxisMapping) and (self.rules, self.ordered) == (other.rules, other.ordered)

    def __hash__(self) -> int:
        return hash((self.rules, self.ordered))

    def resolve(self, names: Sequence[str], mesh: Any = None, *, what: str = "array") -> dict[str, tuple[str, ...]]:
        """The mesh axes each of ``names`` (the axes of one array, or of one map) is split over.

        Names the mapping does not mention are absent from the result. Raises ``MeshError`` for
        a mesh axis the mesh lacks or one claimed by two names.
        """
        wanted = set(names)
        out: dict[str, tuple[str, ...]] = {}
        owner: dict[str, str] = {}
        for name, axes in self.rules:
            if name not in wanted or name in out:
                continue
            if mesh is not None:
                for a in axes:
                    if a not in mesh.axis_names:
                        raise errors.MeshError(
                            f"axis mapping sends {name!r} to mesh axis {a!r}, but the mesh has axes "
                            f"{tuple(mesh.axis_names)} (shape {dict(mesh.shape)})."
                        )
            taken = [a for a in axes if a in owner]
            if taken:
                if self.ordered:
                    continue  # Flax's meaning: try the next rule for this name
                raise errors.MeshError(
                    f"axis mapping: named axes {owner[taken[0]]!r} and {name!r} of one {what} both claim mesh "
                    f"axis {taken[0]!r}; a mesh axis can split only one axis of an array."
                )
            out[name] = axes
            for a in axes:
                owner[a] = name
        return {n: out[n] for n in names if n in out}


class ResourceAxis:
    """Conventional mesh axis names, as in Haliax: ``DATA``, ``MODEL``, ``REPLICA`` (plain strings).

    Example:
        >>> import distmap
        >>> distmap.as_axis_mapping({"batch": distmap.ResourceAxis.DATA})
        AxisMapping({'batch': ('data',)})
    """

    DATA = "data"
    MODEL = "model"
    REPLICA = "replica"


def _mesh_axes(value: MeshAxes, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (str.__str__(value),)  # a str Enum member becomes its plain value
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        if len(set(value)) != len(value):
            raise errors.MeshError(f"axis mapping for {name!r}: mesh axes {tuple(value)} repeat.")
        return tuple(str.__str__(v) for v in value)
    raise errors.MeshError(
        f"axis mapping for {name!r}: expected a mesh axis name, a tuple of them or None, got {value!r}."
    )


def as_axis_mapping(mapping: AxisMappingLike | AxisMapping) -> AxisMapping:
    """Check and normalise a mapping given as a dict or as an ordered list of ``(name, mesh axes)`` rules.

    Example:
        >>> as_axis_mapping({"batch": ("replica", "data"), "ensemble": "model"})
        AxisMapping({'batch': ('replica', 'data'), 'ensemble': ('model',)})
    """
    if isinstance(mapping, AxisMapping):
        return mapping
    if isinstance(mapping, Mapping):
        rules = []
        for name, value in mapping.items():
            if not isinstance(name, str) or not name:
                raise errors.MeshError(f"axis mapping: keys must be axis names (str), got {name!r}.")
            rules.append((name, _mesh_axes(value, name)))
        # Two names may share a mesh axis as long as no one array carries both: checked per array.
        return AxisMapping(tuple(rules), ordered=False)
    if isinstance(mapping, Sequence) and not isinstance(mapping, str):
        rules = []
        for item in mapping:
            if not (isinstance(item, Sequence) and not isinstance(item, str) and len(item) == 2):
                raise errors.MeshError(f"axis mapping rules: expected (name, mesh axes) pairs, got {item!r}.")
            name, value = item
            if not isinstance(name, str) or not name:
                raise errors.MeshError(f"axis mapping rules: expected an axis name (str), got {name!r}.")
            rules.append((name, _mesh_axes(value, name)))
        return AxisMapping(tuple(rules), ordered=True)
    raise errors.MeshError(
        f"axis mapping: expected a {{name: mesh axes}} dict or a list of (name, mesh axes) rules, got {mapping!r}."
    )


_CURRENT: contextvars.ContextVar[AxisMapping | None] = contextvars.ContextVar("distmap_axis_mapping", default=None)


@contextlib.contextmanager
def axis_mapping(mapping: AxisMappingLike | AxisMapping) -> Iterator[AxisMapping]:
    """Make ``mapping`` the current axis mapping inside a ``with`` block.

    Example:
        >>> import distmap
        >>> with distmap.axis_mapping({"batch": "data"}):
        ...     distmap.current_axis_mapping()
        AxisMapping({'batch': ('data',)})
    """
    token = _CURRENT.set(as_axis_mapping(mapping))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current_axis_mapping() -> AxisMapping | None:
    """The mapping set by the innermost :func:`axis_mapping` block, or None."""
    return _CURRENT.get()


def current_mesh() -> Mesh | jax.sharding.AbstractMesh | None:
    """The mesh set by ``jax.set_mesh``, or None.

    One rule under every transformation: the concrete mesh ``jax.set_mesh`` set, whether or not
    JAX is tracing (eager ``jax.grad``, ``jax.vmap``, ``jax.jacfwd`` and ``jax.jit`` alike), so
    concrete arrays are placed on real devices; only where no concrete mesh is set (inside
    ``jax.sharding.use_abstract_mesh``) the abstract one, which traced values follow.
    """
    mesh = jax_compat.concrete_mesh()
    if mesh is None or getattr(mesh, "empty", False) or not mesh.axis_names:
        mesh = jax.sharding.get_abstract_mesh()
    if mesh is None or getattr(mesh, "empty", False) or not mesh.axis_names:
        return None
    return mesh


def make_mesh(
    shape: Mapping[str, int], devices: Sequence[Any] | None = None, *, axis_types: Any = None
) -> Mesh:
    """A mesh with named axes of the given sizes; dict order is axis order and one size may be -1 (the rest).

    Axes are ``AxisType.Explicit`` by default, as in ``jax.make_mesh``; ``distmap.vmap`` works
    with Explicit and Auto meshes alike.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": -1}, devices=jax.devices()[:1])
        >>> dict(mesh.shape)
        {'data': 1}
    """
    if not isinstance(shape, Mapping) or not shape:
        raise errors.MeshError(f"make_mesh: expected a non-empty {{axis name: size}} dict, got {shape!r}.")
    devs = list(jax.devices() if devices is None else devices)
    names = list(shape)
    sizes = []
    for name, size in shape.items():
        if not isinstance(name, str) or not name:
            raise errors.MeshError(f"make_mesh: axis names must be non-empty str, got {name!r}.")
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or (size < 1 and size != -1):
            raise errors.MeshError(f"make_mesh: mesh axis {name!r} has size {size!r}; expected a positive int or -1.")
        sizes.append(int(size))
    if sizes.count(-1) > 1:
        raise errors.MeshError(f"make_mesh: at most one axis may have size -1, got {dict(shape)}.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devs) % known:
            raise errors.MeshError(
                f"make_mesh: {len(devs)} devices cannot be split into {dict(shape)} (the fixed axes take {known})."
            )
        sizes[sizes.index(-1)] = len(devs) // known
    if math.prod(sizes) != len(devs):
        hint = ""
        if devices is None and math.prod(sizes) > len(devs) and devs and devs[0].platform == "cpu":
            hint = (
                f" On CPU, simulate {math.prod(sizes)} devices: start Python with "
                f"XLA_FLAGS=--xla_force_host_platform_device_count={math.prod(sizes)}, or call "
                f"distmap.distributed.initialize(cpu_devices={math.prod(sizes)}) before any JAX work."
            )
        raise errors.MeshError(
            f"make_mesh: mesh {dict(zip(names, sizes))} needs {math.prod(sizes)} devices, but {len(devs)} were given."
            + hint
        )
    if axis_types is None:
        axis_types = (jax.sharding.AxisType.Explicit,) * len(names)
    elif not isinstance(axis_types, (tuple, list)):
        axis_types = (axis_types,) * len(names)
    if len(axis_types) != len(names) or not all(isinstance(t, jax.sharding.AxisType) for t in axis_types):
        raise errors.MeshError(
            f"make_mesh(axis_types=...): expected one jax.sharding.AxisType (e.g. AxisType.Explicit or "
            f"AxisType.Auto) or one per mesh axis {tuple(names)}, got {axis_types!r}."
        )
    return jax.make_mesh(tuple(sizes), tuple(names), axis_types=tuple(axis_types), devices=devs)


def _resolve_mapping(axis_mapping: AxisMappingLike | AxisMapping | None, fn: str) -> AxisMapping:
    mapping = current_axis_mapping() if axis_mapping is None else as_axis_mapping(axis_mapping)
    if mapping is None:
        raise errors.MeshError(f"{fn}: no axis mapping given and none is current (use distmap.axis_mapping(...)).")
    return mapping


def _pspec(x: NamedArray, mapping: AxisMapping, mesh: Any, *, fn: str = "pspec_for") -> PartitionSpec:
    found = mapping.resolve(x.axis_names, mesh)
    parts = []
    for ax in x.axes:
        axes = found.get(ax.name, ())
        if mesh is not None and axes:
            n = math.prod(mesh.shape[a] for a in axes)
            if ax.size % n:
                # A jax.Array cannot hold an uneven split; say so rather than replicate the axis silently.
                raise errors.AxisSizeError(
                    f"{fn}: axis {ax.name!r} has size {ax.size}, which mesh axes {axes} ({n} devices) do not "
                    f"divide, so it cannot be split as the axis mapping asks. Map {ax.name!r} to None to keep it "
                    f"whole on every device, or pad it to a multiple of {n}. (distmap.vmap maps uneven axes by "
                    "padding; a stored array cannot be split unevenly.)"
                )
        parts.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return PartitionSpec(*parts)


def _is_mesh(x: Any) -> bool:
    return isinstance(x, (Mesh, jax.sharding.AbstractMesh))


def check_mesh(mesh: Any, fn: str) -> Any:
    """``mesh`` if it is a ``jax.sharding.Mesh`` (or ``AbstractMesh``) or None; anything else is refused."""
    if mesh is None or _is_mesh(mesh):
        return mesh
    hint = ""
    if isinstance(mesh, (Mapping, AxisMapping)) or (isinstance(mesh, Sequence) and not isinstance(mesh, str)):
        hint = f" It looks like an axis mapping: the order is {fn}(x, axis_mapping, mesh), as in Haliax."
    raise errors.MeshError(
        f"{fn}(mesh=...): expected a jax.sharding.Mesh (e.g. from distmap.make_mesh), got "
        f"{type(mesh).__name__} {mesh!r}.{hint}"
    )


def _check_mapping_arg(axis_mapping: Any, fn: str) -> None:
    if _is_mesh(axis_mapping):
        raise errors.MeshError(
            f"{fn}: the axis_mapping argument is a Mesh; the order is {fn}(x, axis_mapping, mesh), as in Haliax "
            f"(for example {fn}(x, {{'batch': 'data'}}, mesh), or {fn}(x, mesh=mesh) to use the current mapping)."
        )


def has_explicit_axes(mesh: Any) -> bool:
    """Whether any axis of ``mesh`` has ``AxisType.Explicit`` (then shardings are part of array types)."""
    explicit = jax.sharding.AxisType.Explicit
    return any(t == explicit for t in getattr(mesh, "axis_types", ()))


def typed_part(spec: PartitionSpec, mesh: Any, *, explicit: bool) -> PartitionSpec:
    """``spec`` keeping only the mesh axes of ``mesh`` that are Explicit (or, with ``explicit=False``, the others).

    ``reshard`` takes only Explicit axes and ``with_sharding_constraint`` only the others, so a
    mesh that mixes both kinds needs the two parts applied one after the other.
    """
    kinds = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ())))
    is_explicit = lambda a: kinds.get(a) == jax.sharding.AxisType.Explicit  # noqa: E731
    parts = []
    for p in spec:
        axes = () if p is None else ((p,) if isinstance(p, str) else tuple(p))
        kept = tuple(a for a in axes if is_explicit(a) == explicit)
        parts.append(None if not kept else (kept[0] if len(kept) == 1 else kept))
    return PartitionSpec(*parts)


def pspec_for(x: Any, axis_mapping: AxisMappingLike | AxisMapping | None = None, mesh: Mesh | None = None) -> Any:
    """The ``PartitionSpec`` of each NamedArray in the pytree ``x`` under the mapping.

    Arguments in the order of :func:`shard` (and Haliax): ``pspec_for(x, axis_mapping, mesh)``.
    Given a mesh, mesh axis names are checked and an axis its mesh axes do not divide raises
    ``AxisSizeError`` (as ``shard`` and ``host_local_to_global`` do); without one, the mapping is
    applied as written. Leaves other than NamedArrays get ``PartitionSpec()``.

    Example:
        >>> import distmap
        >>> tuple(distmap.pspec_for(distmap.zeros({"batch": 8, "feature": 3}), {"batch": "data"}))
        ('data', None)
    """
    _check_mapping_arg(axis_mapping, "pspec_for")
    mesh = check_mesh(mesh, "pspec_for")
    mapping = _resolve_mapping(axis_mapping, "pspec_for")
    return jax.tree_util.tree_map(
        lambda leaf: _pspec(leaf, mapping, mesh) if isinstance(leaf, NamedArray) else PartitionSpec(),
        x,
        is_leaf=lambda v: isinstance(v, NamedArray),
    )


def shard(x: Any, axis_mapping: AxisMappingLike | AxisMapping | None = None, mesh: Mesh | None = None) -> Any:
    """Place (outside ``jit``) or constrain (inside) every NamedArray of ``x`` by its axis names.

    ``shard(x, axis_mapping, mesh)``, as in Haliax; each defaults to the current one
    (:func:`distmap.axis_mapping`, ``jax.set_mesh``). Leaves other than NamedArrays are left
    as they are. An axis that its mesh axes do not divide raises ``AxisSizeError`` naming it
    (a ``jax.Array`` cannot hold an uneven split): map it to ``None`` or pad it.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> y = distmap.shard(distmap.zeros({"batch": 4}), {"batch": "data"}, mesh)
        >>> tuple(y.array.sharding.spec)
        ('data',)
    """
    _check_mapping_arg(axis_mapping, "shard")
    mesh = check_mesh(mesh, "shard")
    mesh = mesh if mesh is not None else current_mesh()
    if mesh is None:
        raise errors.MeshError("shard: no mesh given and none set with jax.set_mesh.")
    mapping = _resolve_mapping(axis_mapping, "shard")

    def one(leaf: Any) -> Any:
        if not isinstance(leaf, NamedArray):
            return leaf
        return NamedArray(place(leaf.array, _pspec(leaf, mapping, mesh, fn="shard"), mesh), leaf.axes)

    return jax.tree_util.tree_map(one, x, is_leaf=lambda v: isinstance(v, NamedArray))


def place(arr: Any, spec: PartitionSpec, mesh: Any) -> Any:
    """``arr`` laid out as ``spec`` on ``mesh``: ``device_put`` outside ``jit``, a constraint inside."""
    if isinstance(arr, jax.core.Tracer):
        # Inside jit, Explicit mesh axes are part of the array's type and change with reshard
        # (with_sharding_constraint refuses them); Auto axes take a sharding constraint.
        if has_explicit_axes(mesh):
            arr = jax.sharding.reshard(arr, NamedSharding(mesh, typed_part(spec, mesh, explicit=True)))
        auto = typed_part(spec, mesh, explicit=False)
        if any(p is not None for p in auto):
            arr = jax.lax.with_sharding_constraint(arr, NamedSharding(mesh, auto))
        return arr
    return jax.device_put(arr, NamedSharding(mesh, spec))


def loop_pspec(x: NamedArray, mapping: AxisMapping, mesh: Any, *, keep_whole: tuple[str, ...] = ()) -> PartitionSpec | None:
    """The layout a loop step asks of one NamedArray: ``pspec_for``'s, with the axes in ``keep_whole``
    left whole; ``None`` (no constraint: XLA chooses) where a mapped axis is uneven, since a step has
    no better layout to ask for and refusing would fail a loop that JAX runs fine."""
    found = mapping.resolve(x.axis_names, mesh)
    parts = []
    for ax in x.axes:
        axes = () if ax.name in keep_whole else found.get(ax.name, ())
        if axes and ax.size % math.prod(mesh.shape[a] for a in axes):
            return None
        parts.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return PartitionSpec(*parts)
