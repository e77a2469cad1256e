"""Axis mappings and meshes: which mesh axes each named axis is split over.

An axis mapping sends a named axis to one mesh axis or a tuple of them
(``{"batch": ("replica", "data")}``), or is an ordered list of rules
``[("batch", "data"), ("batch", "replica"), ...]`` where, per array, the first rule
whose mesh axes are still free wins. ``distmap.axis_mapping(...)`` makes one current.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from distmap import errors
from distmap._src import jax_compat
from distmap._src.axis import Axis, axis_name
from distmap._src.named import NamedArray, is_named_array

MeshAxes = str | Sequence[str] | None
AxisMappingLike = Mapping[str, MeshAxes] | Sequence[tuple[str, MeshAxes]]


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
    current = as_axis_mapping(mapping)
    token = _CURRENT.set(current)
    try:
        yield current
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
        return legacy_mesh()
    return mesh


def legacy_mesh() -> Mesh | None:
    """The mesh entered with the legacy ``with mesh:`` block (JAX 0.10-0.12 still honour it, with a
    ``DeprecationWarning``), or None. Haliax code sets its mesh this way, so distmap reads it where
    ``jax.set_mesh`` set none (:func:`distmap._src.jax_compat.legacy_mesh` reads it)."""
    found = jax_compat.legacy_mesh()
    if found is None or found.empty:
        return None
    return found


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


def resolve_mapping(axis_mapping: AxisMappingLike | AxisMapping | None, fn: str) -> AxisMapping:
    """``axis_mapping`` as an AxisMapping, else the current one; ``MeshError`` naming ``fn`` where there is neither."""
    mapping = current_axis_mapping() if axis_mapping is None else as_axis_mapping(axis_mapping)
    if mapping is None:
        raise errors.MeshError(f"{fn}: no axis mapping given and none is current (use distmap.axis_mapping(...)).")
    return mapping


def named_pspec(x: NamedArray, mapping: AxisMapping, mesh: Any, *, fn: str = "pspec_for") -> PartitionSpec:
    """The PartitionSpec that ``mapping`` gives ``x``'s axes (sizes checked against ``mesh`` where given)."""
    return pspec_of_axes(x.axes, mapping, mesh, fn=fn)


def pspec_of_axes(axes_of_x: tuple[Axis, ...], mapping: AxisMapping, mesh: Any, *, fn: str) -> PartitionSpec:
    """:func:`named_pspec` for axes alone: an uneven split of a stored array raises, naming ``fn`` and the axis."""
    found = mapping.resolve(tuple(a.name for a in axes_of_x), mesh)
    parts = []
    for ax in axes_of_x:
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
        parts.append(spec_entry(axes))
    return PartitionSpec(*parts)


def entry_axes(entry: Any) -> tuple[str, ...]:
    """The mesh axes one ``PartitionSpec`` entry names: ``None`` -> ``()``, ``"data"`` -> ``("data",)``.

    Example:
        >>> entry_axes(None), entry_axes("data"), entry_axes(("data", "model"))
        ((), ('data',), ('data', 'model'))
    """
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def spec_entry(axes: Sequence[str]) -> Any:
    """The ``PartitionSpec`` entry that splits over ``axes``: the inverse of :func:`entry_axes`.

    Example:
        >>> spec_entry(()), spec_entry(("data",)), spec_entry(("data", "model"))
        (None, 'data', ('data', 'model'))
    """
    if not axes:
        return None
    return axes[0] if len(axes) == 1 else tuple(axes)


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


def given_or_current_mesh(mesh: Any, fn: str) -> Any:
    """``mesh`` (checked), else the current one; ``MeshError`` naming ``fn`` where there is neither."""
    mesh = check_mesh(mesh, fn)
    mesh = mesh if mesh is not None else current_mesh()
    if mesh is None:
        raise errors.MeshError(f"{fn}: no mesh given and none set with jax.set_mesh.")
    return mesh


def check_mapping_arg(axis_mapping: Any, fn: str) -> None:
    """Refuse a Mesh given where the axis mapping goes (Haliax's argument order is ``(x, axis_mapping, mesh)``)."""
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
    is_explicit = lambda a: kinds.get(a) == jax.sharding.AxisType.Explicit  # noqa: E731 - a one-line predicate
    parts = []
    for p in spec:
        parts.append(spec_entry(tuple(a for a in entry_axes(p) if is_explicit(a) == explicit)))
    return PartitionSpec(*parts)


AXIS_NAMES = "axis_names"
"""The dataclass field metadata key naming the axes of an unnamed array field (``distmap.field(axis_names=...)``;
Haliax's ``hax.field`` writes the same key, so Modules written for either are read alike)."""


def _has_sharding(x: Any) -> bool:
    """Whether ``x`` already lies somewhere: a ``jax.Array`` (a host numpy array or a shape struct does not)."""
    return isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer)


def _named_fields(node: Any) -> tuple[Any, ...]:
    """The dataclass fields of ``node`` whose metadata names the axes of an unnamed array (none for most nodes)."""
    if not dataclasses.is_dataclass(node) or isinstance(node, type):
        return ()
    return tuple(f for f in dataclasses.fields(node) if f.metadata.get(AXIS_NAMES) is not None)


def pspec_for(
    x: Any,
    axis_mapping: AxisMappingLike | AxisMapping | None = None,
    mesh: Mesh | None = None,
    *,
    preserve_existing_shardings: bool = True,
) -> Any:
    """The ``PartitionSpec`` of every array in the pytree ``x`` under the mapping, by Haliax's rules.

    Arguments in the order of :func:`shard`: ``pspec_for(x, axis_mapping, mesh)`` (Haliax's third
    positional argument, ``preserve_existing_shardings``, is keyword-only here). Per leaf:

    - a NamedArray: the spec its axis names ask for;
    - an unnamed array field of a Module declared with ``distmap.field(axis_names=(...))``: the spec
      of those names;
    - another unnamed array: ``PartitionSpec()`` at rank 0, ``PartitionSpec(None)`` otherwise (replicated);
    - a Python scalar: ``PartitionSpec()``; anything else: ``None``.

    With ``preserve_existing_shardings`` (the default, as in Haliax) an array that already lies on
    devices (a ``jax.Array`` outside ``jit``) gets ``None``, meaning "keep its layout"; pass
    ``preserve_existing_shardings=False`` for the spec its names ask for. Given a mesh, mesh axis
    names are checked and an axis its mesh axes do not divide raises ``AxisSizeError`` (as ``shard``
    and ``host_local_to_global`` do); without one, the mapping is applied as written.

    Example:
        >>> import distmap
        >>> x = distmap.zeros({"batch": 8, "feature": 3})
        >>> tuple(distmap.pspec_for(x, {"batch": "data"}, preserve_existing_shardings=False))
        ('data', None)
        >>> distmap.pspec_for(x, {"batch": "data"}) is None   # x lies on a device already: keep it
        True
    """
    check_mapping_arg(axis_mapping, "pspec_for")
    if isinstance(mesh, bool):
        raise errors.MeshError(
            f"pspec_for(x, axis_mapping, mesh): the third argument is the mesh, got {mesh!r}; pass Haliax's "
            f"preserve_existing_shardings={mesh!r} by keyword."
        )
    mesh = check_mesh(mesh, "pspec_for")
    mapping = resolve_mapping(axis_mapping, "pspec_for")
    preserve = preserve_existing_shardings

    def names_spec(names: Sequence[str], value: Any) -> PartitionSpec | None:
        shape = tuple(getattr(value, "shape", ()))
        if len(shape) != len(names):
            raise errors.ShapeMismatchError(
                f"pspec_for: a field declared with axis_names={tuple(names)} holds an array of shape {shape}; "
                f"it needs one name per dimension."
            )
        spec = pspec_of_axes(tuple(map(Axis, names, shape)), mapping, mesh, fn="pspec_for")
        return None if preserve and _has_sharding(value) else spec

    def leaf_spec(leaf: Any) -> Any:
        if isinstance(leaf, NamedArray):
            if not hasattr(leaf.array, "shape"):
                return None
            spec = named_pspec(leaf, mapping, mesh)  # checked (mesh axes, sizes) even where the layout is kept
            return None if preserve and _has_sharding(leaf.array) else spec
        if _named_fields(leaf):
            return module_specs(leaf)
        if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
            if tuple(leaf.shape) == ():
                return PartitionSpec()
            return None if preserve and _has_sharding(leaf) and not _single_device(leaf) else PartitionSpec(None)
        if isinstance(leaf, (bool, int, float, complex)):
            return PartitionSpec()
        return None

    def module_specs(node: Any) -> Any:
        # The node rebuilt with a spec in place of each array: fields named by metadata take their names'
        # spec, the others are walked as any subtree is.
        out = object.__new__(type(node))
        for f in dataclasses.fields(node):
            value = getattr(node, f.name)
            names = f.metadata.get(AXIS_NAMES)
            if names is not None and hasattr(value, "shape"):
                spec = names_spec(tuple(names), value)
            elif f.metadata.get("static", False):
                spec = value
            else:
                spec = walk(value)
            object.__setattr__(out, f.name, spec)
        return out

    def walk(tree: Any) -> Any:
        return jax.tree_util.tree_map(leaf_spec, tree, is_leaf=lambda v: isinstance(v, NamedArray) or bool(_named_fields(v)))

    return walk(x)


def _single_device(x: Any) -> bool:
    return isinstance(getattr(x, "sharding", None), jax.sharding.SingleDeviceSharding)


def infer_resource_partitions(
    x: Any,
    axis_mapping: AxisMappingLike | AxisMapping | None = None,
    mesh: Mesh | None = None,
    *,
    preserve_existing_shardings: bool = True,
) -> Any:
    """The ``NamedSharding`` of every array in ``x``: :func:`pspec_for`'s specs on the mesh (given, or
    current), and an array's own sharding where its spec is ``None`` (kept). As in Haliax, these are the
    ``in_shardings``/``out_shardings`` a ``jax.jit`` of a Module-taking function wants.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> s = distmap.infer_resource_partitions(distmap.zeros({"batch": 4}), {"batch": "data"}, mesh,
        ...                                       preserve_existing_shardings=False)
        >>> tuple(s.spec)
        ('data',)
    """
    mesh = given_or_current_mesh(mesh, "infer_resource_partitions")
    specs = pspec_for(x, axis_mapping, mesh, preserve_existing_shardings=preserve_existing_shardings)

    def to_sharding(spec: Any, node: Any) -> Any:
        if isinstance(spec, PartitionSpec):
            return NamedSharding(mesh, spec)
        array = node.array if isinstance(node, NamedArray) else node
        return getattr(array, "sharding", None) if _has_sharding(array) else None

    return jax.tree_util.tree_map(
        to_sharding, specs, x, is_leaf=lambda v: v is None or isinstance(v, PartitionSpec)
    )


def physical_axis_name(axis: Any, axis_mapping: AxisMappingLike | AxisMapping | None = None) -> str | tuple[str, ...] | None:
    """The mesh axis (or axes) the named ``axis`` is split over under the mapping (default: the current one),
    or None where the mapping does not split it. One mesh axis is returned as its name, several as a tuple.

    Example:
        >>> import distmap
        >>> distmap.physical_axis_name("batch", {"batch": "data"}), distmap.physical_axis_name("feature", {"batch": "data"})
        ('data', None)
    """
    mapping = current_axis_mapping() if axis_mapping is None else as_axis_mapping(axis_mapping)
    if mapping is None:
        return None
    name = axis_name(axis)
    return spec_entry(mapping.resolve((name,)).get(name, ()))


def physical_axis_size(
    axis: Any, axis_mapping: AxisMappingLike | AxisMapping | None = None, mesh: Mesh | None = None
) -> int | None:
    """How many devices the named ``axis`` is split over (the product of its mesh axes' sizes on the mesh,
    given or current), or None where the mapping does not split it.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> distmap.physical_axis_size("batch", {"batch": "data"}, mesh)
        1
    """
    mesh = given_or_current_mesh(mesh, "physical_axis_size")
    found = physical_axis_name(axis, axis_mapping)
    if found is None:
        return None
    axes = (found,) if isinstance(found, str) else found
    for a in axes:
        if a not in mesh.axis_names:
            raise errors.MeshError(
                f"physical_axis_size: the axis mapping sends {axis!r} to mesh axis {a!r}, but the mesh has axes "
                f"{tuple(mesh.axis_names)}."
            )
    return math.prod(mesh.shape[a] for a in axes)


def round_axis_for_partitioning(axis: Any, axis_mapping: AxisMappingLike | AxisMapping | None = None,
                                mesh: Mesh | None = None) -> Any:
    """``axis`` with its size rounded up to a multiple of the devices it is split over (unchanged where the
    mapping does not split it): the one place the padding rule for a stored array lives.

    Example:
        >>> import distmap, jax
        >>> mesh = distmap.make_mesh({"data": 1}, devices=jax.devices()[:1])
        >>> distmap.round_axis_for_partitioning(distmap.Axis("vocab", 5), {"vocab": "data"}, mesh)
        Axis(name='vocab', size=5)
    """
    n = physical_axis_size(axis, axis_mapping, mesh)
    if n is None:
        return axis
    return axis.resize(-(-axis.size // n) * n)


def shard(
    x: Any, axis_mapping: AxisMappingLike | AxisMapping | None = None, mesh: Mesh | jax.sharding.AbstractMesh | None = None
) -> Any:
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
    check_mapping_arg(axis_mapping, "shard")
    mesh = check_mesh(mesh, "shard")
    mesh = mesh if mesh is not None else current_mesh()
    if mesh is None:
        raise errors.MeshError("shard: no mesh given and none set with jax.set_mesh.")
    mapping = resolve_mapping(axis_mapping, "shard")

    def one(leaf: Any) -> Any:
        if not isinstance(leaf, NamedArray):
            return leaf
        return NamedArray(place(leaf.array, named_pspec(leaf, mapping, mesh, fn="shard"), mesh), leaf.axes)

    return jax.tree_util.tree_map(one, x, is_leaf=is_named_array)


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


def loop_pspec(x: NamedArray, mapping: AxisMapping, mesh: Any) -> PartitionSpec | None:
    """The layout a loop step asks of one NamedArray: ``pspec_for``'s; ``None`` (no constraint: XLA
    chooses) where a mapped axis is uneven, since a step has no better layout to ask for and refusing
    would fail a loop that JAX runs fine."""
    found = mapping.resolve(x.axis_names, mesh)
    parts = []
    for ax in x.axes:
        axes = found.get(ax.name, ())
        if axes and ax.size % math.prod(mesh.shape[a] for a in axes):
            return None
        parts.append(spec_entry(axes))
    return PartitionSpec(*parts)
