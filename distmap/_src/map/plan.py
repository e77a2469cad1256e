"""The plan of one mapped call, resolved once and read by both lowerings.

For a call ``vmap(fn, axes)(*args, **kwargs)`` the plan says, for every leaf of
``(args, kwargs)`` (NamedArrays count as leaves):

* what it is: a NamedArray (its axes), an unnamed array, a Python scalar, or a static value;
* for each mapped level (the axes in the order given, first outermost), the dimension of
  the leaf that level maps, or ``None``; NamedArrays by name, unnamed arrays by their spec
  (``default`` / ``args`` / ``kwargs``), the spec of a level after the first resolved on the
  leaf as that level sees it, with the earlier mapped dimensions gone;
* the size of each mapped axis, on which every mapped leaf agrees.

The one-device lowering (:mod:`.local`) nests one ``jax.vmap`` per level with these
dimensions; the mesh lowering (:mod:`.sharded`) turns the same dimensions into
``PartitionSpec`` s and runs the one-device lowering on each shard. Neither looks at a
spec itself, so the two cannot disagree on what a spec, a size or an axis means.

A plan compares and hashes by value (shapes, dimensions, static values; never array
contents or Python scalar values), so the mesh lowering uses it as ``jax.jit`` static
data: one compilation per distinct structure, as ``jax.jit`` itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from distmap import errors
from distmap._src.axis import Axis
from distmap._src.leaves import is_array
from distmap._src.named import is_named_array
from distmap._src.map import specs
from distmap._src.map.statics import static_key
from distmap._src.named import NamedArray

#: Python scalars: traced by the mesh lowering's ``jax.jit`` as ``jax.jit`` traces them, never mapped.
SCALAR_TYPES = (bool, int, float, complex)


class Request:
    """What ``vmap`` was asked for, checked once when the function is wrapped.

    Attributes:
        axes: ``((name, size or None), ...)``, the first outermost.
        default, args, kwargs: the specs of unnamed leaves.
        chunk_size: map at most this many elements at a time, or None.
        fn: the mapped function, whose parameters the specs bind to (read on first need).
    """

    __slots__ = ("axes", "names", "default", "args", "kwargs", "chunk_size", "fn", "_binding", "_key")

    def __init__(
        self,
        axes: tuple[tuple[str, int | None], ...],
        default: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        chunk_size: int | None,
        fn: Callable[..., Any] | None,
    ):
        self.axes = axes
        self.names = tuple(n for n, _ in axes)
        self.default = default
        self.args = args
        self.kwargs = kwargs
        self.chunk_size = chunk_size
        self.fn = fn
        self._binding: Any = _UNREAD
        self._key: Any = None

    def key(self) -> tuple:
        """What a plan depends on besides the call's inputs: the axes, the specs and (with specs) fn's parameters."""
        if self._key is None:
            if not self.args and not self.kwargs:
                self._key = (self.axes, _spec_key(self.default))
            else:
                binding = self.binding.key if self.binding is not None else None
                self._key = (self.axes, _spec_key(self.default), _spec_key(self.args), _spec_key(self.kwargs), binding)
        return self._key

    @property
    def binding(self) -> specs.Binding | None:
        """``fn``'s parameters, or None where its signature cannot be read."""
        if self._binding is _UNREAD:
            self._binding = specs.binding_of(self.fn) if self.fn is not None else None
        return self._binding


_UNREAD = object()


def _spec_key(spec: Any) -> Any:
    if spec is specs.default_spec:
        return spec  # the common case, without a flatten
    leaves, treedef = jax.tree_util.tree_flatten(spec, is_leaf=specs.is_spec_leaf)
    return (treedef, tuple(static_key(leaf) for leaf in leaves))


class Scalar:
    """The kind of a Python scalar leaf: its type only, so its value never keys a compilation."""

    __slots__ = ("type",)

    def __init__(self, tp: type):
        self.type = tp

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Scalar) and self.type is other.type

    def __hash__(self) -> int:
        return hash((Scalar, self.type))


class StaticKind:
    """The kind of a non-array leaf: its value, compared by :func:`~.statics.static_key` (never stale)."""

    __slots__ = ("value", "_key", "_hash")

    def __init__(self, value: Any):
        self.value = value
        self._key = static_key(value)
        self._hash = hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, StaticKind) and self._hash == other._hash and self._key == other._key

    def __hash__(self) -> int:
        return self._hash


class Plan:
    """The resolved plan of one call (see the module docstring).

    Attributes:
        names: the mapped axis names, first outermost.
        sizes: their sizes (true, global sizes).
        treedef: the structure of ``(args, kwargs)``, NamedArrays as leaves.
        kinds: per leaf: the axes of a NamedArray, ``True`` for an unnamed array, a
            :class:`Scalar` or a :class:`StaticKind`.
        dims: per leaf: for each level the dimension of the leaf (as given) that it maps,
            or None; ``None`` for non-array leaves.
        arrays: the indices of the array leaves (NamedArray or unnamed), in order: those with ``dims``.
        traced: the indices of the leaves a ``jax.jit`` of the map traces: the arrays and the
            Python scalars, in order.
        in_axes: per level, the ``in_axes`` of the array leaves at that level (dimensions
            counted after the earlier levels' dimensions are gone).
        inner: per leaf, the axes a NamedArray has inside the map (None for other leaves).
    """

    __slots__ = ("names", "sizes", "treedef", "kinds", "dims", "arrays", "traced", "in_axes", "inner", "_hash", "_front")

    def __init__(self, names, sizes, treedef, kinds, dims, inner):
        self.names: tuple[str, ...] = names
        self.sizes: tuple[int, ...] = sizes
        self.treedef = treedef
        self.kinds: tuple[Any, ...] = kinds
        self.dims: tuple[tuple[int | None, ...] | None, ...] = dims
        self.inner: tuple[tuple[Axis, ...] | None, ...] = inner
        self.arrays = tuple(i for i, row in enumerate(dims) if row is not None)
        self.traced = tuple(i for i, (row, k) in enumerate(zip(dims, kinds)) if row is not None or type(k) is Scalar)
        rows = [dims[i] for i in self.arrays]
        self.in_axes: tuple[tuple[int | None, ...], ...]
        if len(names) == 1:  # the common case: dimensions as given
            self.in_axes = (tuple(row[0] for row in rows),)
        else:
            self.in_axes = tuple(tuple(_level_dim(row, level) for row in rows) for level in range(len(names)))
        self._hash: int | None = None  # only the mesh lowering hashes a plan (as jit static data)
        self._front: tuple[Axis, ...] | None = None

    def unwrap(self, leaves: Sequence[Any], indices: Sequence[int]) -> list[Any]:
        """The values at ``indices`` of the call's ``leaves``, each NamedArray as its array."""
        kinds = self.kinds
        return [leaves[i].array if type(kinds[i]) is tuple else leaves[i] for i in indices]

    def _key(self) -> tuple:
        return (self.names, self.sizes, self.treedef, self.kinds, self.dims)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Plan) and hash(self) == hash(other) and self._key() == other._key()

    def __hash__(self) -> int:
        if self._hash is None:
            self._hash = hash(self._key())
        return self._hash

    def front(self, sizes: Sequence[int] | None = None) -> tuple[Axis, ...]:
        """The axes every output gains in front, in order (with ``sizes``, a device's share, if given)."""
        if sizes is None or tuple(sizes) == self.sizes:
            if self._front is None:
                self._front = _axes(self.names, self.sizes)
            return self._front
        return _axes(self.names, sizes)


def _axes(names: Sequence[str], sizes: Sequence[int]) -> tuple[Axis, ...]:
    # The names were checked by vmap and the sizes come from shapes: no need to validate again.
    return tuple(tuple.__new__(Axis, ns) for ns in zip(names, sizes))


def _level_dim(row: tuple[int | None, ...], level: int) -> int | None:
    d = row[level]
    if d is None:
        return None
    return d - sum(1 for e in row[:level] if e is not None and e < d)


def resolve(request: Request, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Plan, list[Any]]:
    """The plan of the call ``fn(*args, **kwargs)`` and its flat leaves (NamedArrays as leaves).

    Raises ``AxisSizeError`` when mapped leaves disagree on a size (naming both argument
    paths), ``MappingError`` for a spec that cannot apply (naming the leaf).
    """
    args = tuple(args)
    kwargs = dict(kwargs)
    leaves, treedef = jax.tree_util.tree_flatten((args, kwargs), is_leaf=is_named_array)
    key = (request.key(), treedef, tuple([leaf.axes if type(leaf) is NamedArray else _signature(leaf) for leaf in leaves]))
    plan = _PLANS.get(key)
    if plan is None:
        plan = _resolve(request, args, kwargs, leaves, treedef)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan, leaves


#: Plans by (request, input structure): a plan depends on nothing else, so a hit is always right.
_PLANS: dict[tuple, Plan] = {}
_MAX_PLANS = 1024


def _signature(leaf: Any) -> Any:
    """What the plan reads of one leaf: a NamedArray's axes; an array's type, shape and dtype; a scalar's
    type; any other value by its static key. Callable specs are therefore asked once per signature, as
    ``jax.vmap`` reads ``in_axes`` once per trace."""
    t = type(leaf)
    if t is NamedArray:
        return leaf.axes
    if t in SCALAR_TYPES:
        return (t, _traceable(leaf))
    if is_array(leaf):
        return (t, tuple(leaf.shape), leaf.dtype)
    return static_key(leaf)


def _resolve(request: Request, args: tuple, kwargs: dict, leaves: list[Any], treedef: Any) -> Plan:
    names = request.names
    levels = len(names)
    leaf_specs: list[Any] | None = None
    if request.args or request.kwargs:
        leaf_specs = _leaf_specs(request, args, kwargs)  # also refuses specs that match no argument

    def where(i: int, name: str) -> Callable[[], str]:
        return lambda: f"vmap over {name!r}: " + specs.leaf_paths(args, kwargs)[i]

    kinds: list[Any] = []
    dims: list[Any] = []
    inner: list[Any] = []
    found: list[list[tuple[int, int]]] = [[] for _ in names]  # per level: (size, leaf index)
    for i, leaf in enumerate(leaves):
        t = type(leaf)
        if t is NamedArray:
            axes = leaf.axes
            row: list[int | None] = [None] * levels
            kept = []
            for d, ax in enumerate(axes):
                if ax.name in names:
                    level = names.index(ax.name)
                    row[level] = d
                    found[level].append((ax.size, i))
                else:
                    kept.append(ax)
            kinds.append(axes)
            dims.append(tuple(row))
            inner.append(axes if len(kept) == len(axes) else tuple(kept))
            continue
        if leaf_specs is None:
            leaf_specs = _leaf_specs(request, args, kwargs)
        spec = leaf_specs[i]
        if is_array(leaf):
            leaf_dims = _array_dims(spec, leaf, names, lambda level, i=i: where(i, names[level]))  # type: ignore[misc]  # mypy cannot type a lambda with a default
            for level, dim in enumerate(leaf_dims):
                if dim is not None:
                    found[level].append((leaf.shape[dim], i))
            kinds.append(True)
            dims.append(leaf_dims)
            inner.append(None)
        else:
            _check_unmappable(spec, leaf, where(i, names[0]))
            kinds.append(Scalar(t) if t in SCALAR_TYPES and _traceable(leaf) else StaticKind(leaf))
            dims.append(None)
            inner.append(None)
    sizes = tuple(_agree(name, given, found[level], args, kwargs) for level, (name, given) in enumerate(request.axes))
    return Plan(names, sizes, treedef, tuple(kinds), tuple(dims), tuple(inner))


def _traceable(x: Any) -> bool:
    """Whether ``jax.jit`` can trace the Python scalar ``x``: an int must fit the default integer type."""
    if type(x) is not int:
        return True
    bits = 64 if jax.config.read("jax_enable_x64") else 32
    return -(2 ** (bits - 1)) <= x < 2 ** (bits - 1)


def _leaf_specs(request: Request, args: tuple, kwargs: dict) -> list[Any]:
    pos, kw = specs.call_specs(request.binding, len(args), sorted(kwargs), request.default, request.args, request.kwargs)
    return specs.leaf_specs(args, kwargs, pos, kw)


def _array_dims(spec: Any, leaf: Any, names: Sequence[str], where: Callable[[int], Callable[[], str]]) -> tuple[int | None, ...]:
    """For each level, the dimension of ``leaf`` it maps; the spec is resolved per level on the remaining dims."""
    shape = tuple(leaf.shape)
    remaining = list(range(len(shape)))
    row: list[int | None] = []
    for level in range(len(names)):
        if spec is None:
            row.append(None)
            continue
        now = tuple(shape[r] for r in remaining)
        if spec is specs.default_spec:  # the common case, without building a view
            k = 0 if now else None
        else:
            view = leaf if level == 0 or len(remaining) == len(shape) else _view(leaf, remaining)
            k = specs.resolve(spec, view, now, where(level))
        if k is None:
            row.append(None)
            continue
        row.append(remaining.pop(k))
    return tuple(row)


def _view(leaf: Any, remaining: Sequence[int]) -> Any:
    """An array (``is_array`` accepts it) with ``leaf``'s dtype and only its ``remaining`` dimensions.

    This is what a spec of an inner level sees: the leaf inside the outer maps. For plain
    dtypes it is a zero-strided numpy view (no memory, no device work); for extended
    dtypes (typed PRNG keys) it is the leaf indexed at 0 on the mapped dimensions.
    """
    shape = tuple(leaf.shape[r] for r in remaining)
    if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.extended):
        keep = set(remaining)
        return leaf[tuple(slice(None) if d in keep else 0 for d in range(leaf.ndim))]
    return np.broadcast_to(np.zeros((), leaf.dtype), shape)


def _check_unmappable(spec: Any, leaf: Any, where: Callable[[], str]) -> None:
    """A non-array leaf is never mapped; a spec asking for it is a mistake, not something to ignore."""
    if spec is None or spec is specs.default_spec:
        return
    asked = spec(leaf) if callable(spec) else spec
    if asked is not None:
        raise errors.MappingError(
            f"{where()} is a {type(leaf).__name__} ({leaf!r:.40}), not an array, so it cannot be mapped on dim "
            f"{asked!r}; give it spec None (or equinox.if_array(0) for a pytree that mixes arrays and other values)."
        )


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
