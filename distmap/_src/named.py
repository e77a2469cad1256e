"""NamedArray: a JAX array whose dimensions carry names.

The array data is the pytree's only leaf; the axes (names and sizes) are static
metadata. Each NamedArray keeps its flattened form ready, so flattening is a C-level
attribute read, and unflattening skips validation: a NamedArray costs no Python
frame going into a ``jax.jit`` dispatch and one coming out, and it passes through ``jax.grad``, ``jax.vmap`` and
``jax.tree_util`` untouched. (Under a raw ``jax.vmap`` the leaf inside the mapped
function is the per-example array, which no longer matches the stored axes; map by
name with :func:`distmap.vmap` instead.)
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, overload

import jax
import jax.numpy as jnp
import numpy as np

from distmap import errors
from distmap._src.axis import Axis, AxisSelection, AxisSelector, axis_name, parse_selection


class NamedArray:
    """An immutable JAX array with named axes.

    Construct one with :func:`distmap.named` (which accepts names or ``Axis``
    objects) or ``NamedArray(array, axes)`` with a sequence of ``Axis``. Arithmetic
    and comparison operators broadcast by name: the result's axes are the left
    operand's axes, in its order, followed by the right operand's other axes in
    theirs.

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> x = distmap.named(jnp.arange(6).reshape(2, 3), ("batch", "feature"))
        >>> x.shape
        {'batch': 2, 'feature': 3}
        >>> x.sum("feature").array
        Array([ 3, 12], dtype=int32)
        >>> (x["feature", 0] + x["batch", 1]).axis_names
        ('batch', 'feature')
    """

    __slots__ = ("array", "axes", "_tree")
    __array_priority__ = 1000  # numpy scalars on the left defer to our reflected operators
    array: jax.Array
    axes: tuple[Axis, ...]

    def __init__(self, array: Any, axes: Sequence[Axis]):
        if not isinstance(array, jax.Array) and (  # jax arrays and tracers: the fast path
            not hasattr(array, "shape") or not hasattr(array, "dtype") or isinstance(array, np.ndarray) or np.isscalar(array)
        ):
            array = as_jax_array(array, "NamedArray")
        axes = tuple(axes)
        for ax in axes:
            if not isinstance(ax, Axis):
                raise errors.AxisSelectorError(
                    f"NamedArray(axes=...): expected a sequence of Axis, got {type(ax).__name__} {ax!r}; "
                    "use distmap.named(array, names) to take sizes from the array."
                )
        _check_unique(tuple(a.name for a in axes), "NamedArray")
        shape = tuple(array.shape)
        if shape != tuple(a.size for a in axes):
            raise errors.ShapeMismatchError(
                f"NamedArray: array of shape {shape} does not match axes "
                f"{format_axes(axes)} (shape {tuple(a.size for a in axes)})."
            )
        object.__setattr__(self, "array", array)
        object.__setattr__(self, "axes", axes)
        object.__setattr__(self, "_tree", ((array,), axes))  # the pytree flattening; see _unflatten

    # ----------------------------------------------------------------- basics
    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"NamedArray is immutable; cannot set {name!r}.")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"NamedArray is immutable; cannot delete {name!r}.")

    def __repr__(self) -> str:
        return f"NamedArray({format_axes(self.axes)}, {self.array!r})"

    def __reduce__(self):
        # copy, deepcopy and pickle rebuild through wrap (the slots are read-only to setattr).
        return wrap, (self.array, self.axes)

    @property
    def axis_names(self) -> tuple[str, ...]:
        """The axis names, in order."""
        return tuple(a.name for a in self.axes)

    @property
    def shape(self) -> dict[str, int]:
        """``{name: size}`` in axis order."""
        return {a.name: a.size for a in self.axes}

    @property
    def dtype(self) -> jnp.dtype:
        return self.array.dtype

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def size(self) -> int:
        out = 1
        for a in self.axes:
            out *= a.size
        return out

    __hash__ = None  # type: ignore[assignment]  # == is elementwise, as for jax arrays

    def __bool__(self) -> bool:
        if self.size != 1:
            raise errors.ArgumentTypeError(
                f"the truth value of a NamedArray with axes {format_axes(self.axes)} is ambiguous; reduce it first, "
                "e.g. x.any() or x.all() (or x.any('axis') for one axis)."
            )
        return bool(self.array)

    def __len__(self) -> int:
        raise errors.ArgumentTypeError(
            f"len() of a NamedArray is ambiguous; use x.axis_size(name) (axes: {self.axis_names})."
        )

    def __iter__(self):
        raise errors.ArgumentTypeError(
            f"a NamedArray cannot be iterated without naming an axis; use x[name, i] or "
            f"distmap.unstack (axes: {self.axis_names})."
        )

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(x)``: the data as a numpy array, its dimensions in the order of ``x.axes``.

        The names are dropped (numpy has none); ``x.axis_names`` says which dimension is which.
        Use ``x.rearrange(order)`` first for another order. Under ``jax.jit`` this fails as it
        does for any traced array: there is no value to copy to the host yet.

        Example:
            >>> import distmap, numpy as np
            >>> np.asarray(distmap.ones({"batch": 2, "feature": 3})).shape
            (2, 3)
        """
        if copy is False:
            raise ValueError("np.asarray(NamedArray, copy=False): the data lives in a JAX array, so a copy is needed.")
        return np.asarray(self.array, dtype=dtype)

    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> NamedArray:
        """numpy ufuncs act elementwise by name, as the operators do: ``np.float32(2) * x``, ``np.exp(x)``.

        The jnp function of the same name does the work, so the result is a NamedArray. ufunc
        methods (``np.add.reduce``) and ``out=`` are refused: reduce by name with distmap.
        """
        fn = getattr(jnp, ufunc.__name__, None)
        if method != "__call__" or kwargs or fn is None:
            what = f"np.{ufunc.__name__}" + ("" if method == "__call__" else f".{method}")
            raise errors.ArgumentTypeError(
                f"{what}({', '.join(sorted(kwargs)) + '=...' if kwargs else '...'}) on a NamedArray: numpy does not know "
                f"axis names; use distmap's functions (distmap.sum(x, 'axis'), ...) or np.asarray(x) for a plain array "
                f"(axes {self.axis_names})."
            )
        if len(inputs) == 1:
            return wrap(fn(self.array), self.axes)
        if len(inputs) == 2:
            return binary_op(fn, inputs[0], inputs[1], ufunc.__name__)
        raise errors.ArgumentTypeError(f"np.{ufunc.__name__} on a NamedArray: only ufuncs of one or two operands are supported.")

    def __array_function__(self, func: Any, types: Any, args: Any, kwargs: Any) -> Any:
        # np.sum, np.concatenate, np.shape ... would read a NamedArray by position, or call its
        # methods with numpy's keywords: refuse, naming the way by name.
        name = getattr(func, "__name__", str(func))
        raise errors.ArgumentTypeError(
            f"np.{name} on a NamedArray: numpy does not know axis names. Use distmap's function, which takes "
            f"axes by name (distmap.sum(x, 'batch'), distmap.concatenate('batch', xs), ...), or np.asarray(x) "
            f"for a plain array in the order of x.axes {self.axis_names}."
        )

    # ------------------------------------------------------------- axis lookup
    def _index_of(self, sel: AxisSelector) -> int:
        name = axis_name(sel)
        if getattr(self.array, "ndim", len(self.axes)) != len(self.axes):
            _stale(self)
        for i, a in enumerate(self.axes):
            if a.name == name:
                if isinstance(sel, Axis) and sel.size != a.size:
                    raise errors.AxisSizeError(
                        f"axis {name!r} has size {a.size} in this array, but {sel!r} was asked for."
                    )
                return i
        raise errors.AxisNotFoundError(f"axis {name!r} is not among this array's axes {self.axis_names}.")

    def has_axis(self, sel: AxisSelection) -> bool:
        """Whether every axis named by ``sel`` is here (with the same size, where one is given)."""
        by_name = {a.name: a.size for a in self.axes}
        for name, size in parse_selection(sel):
            if name not in by_name or (size is not None and by_name[name] != size):
                return False
        return True

    @overload
    def resolve_axis(self, sel: AxisSelector) -> Axis: ...
    @overload
    def resolve_axis(self, sel: AxisSelection) -> Axis | tuple[Axis, ...]: ...

    def resolve_axis(self, sel: AxisSelection) -> Axis | tuple[Axis, ...]:
        """The ``Axis`` (or tuple of them, for a selection) that ``sel`` names here.

        Example:
            >>> import distmap
            >>> distmap.zeros({"batch": 2, "feature": 3}).resolve_axis("feature")
            Axis(name='feature', size=3)
        """
        if isinstance(sel, (Axis, str)):
            return self.axes[self._index_of(sel)]
        return tuple(self.axes[self._index_of(Axis(n, s) if s is not None else n)] for n, s in parse_selection(sel))

    def axis_size(self, sel: AxisSelection) -> int:
        """The size of one axis, or the product of the sizes of a selection."""
        ax = self.resolve_axis(sel)
        if isinstance(ax, Axis):
            return ax.size
        out = 1
        for a in ax:
            out *= a.size
        return out

    @overload
    def axis_indices(self, sel: AxisSelector) -> int: ...
    @overload
    def axis_indices(self, sel: AxisSelection) -> int | tuple[int, ...]: ...

    def axis_indices(self, sel: AxisSelection) -> int | tuple[int, ...]:
        """The positional dimension(s) of the named axis or axes."""
        if isinstance(sel, (Axis, str)):
            return self._index_of(sel)
        return tuple(self._index_of(n if s is None else Axis(n, s)) for n, s in parse_selection(sel))

    # ----------------------------------------------------------- restructuring
    def rearrange(self, order: Sequence[AxisSelector | Any]) -> NamedArray:
        """Permute axes to ``order``: every axis once, or with ``...`` standing for the rest.

        Example:
            >>> import distmap
            >>> x = distmap.zeros({"a": 1, "b": 2, "c": 3})
            >>> x.rearrange(("c", ...)).axis_names
            ('c', 'a', 'b')
        """
        if isinstance(order, (str, Axis)):
            order = (order,)
        elif not isinstance(order, Sequence):
            raise errors.AxisSelectorError(
                f"rearrange: expected a sequence of axis names (with at most one '...'), got {type(order).__name__} "
                f"{order!r}."
            )
        ellipses = [i for i, o in enumerate(order) if o is Ellipsis]
        if len(ellipses) > 1:
            raise errors.AxisSelectorError(f"rearrange: at most one '...' in {tuple(order)!r}.")
        named_part = [o for o in order if o is not Ellipsis]
        idx = [self._index_of(o) for o in named_part]
        names = [self.axes[i].name for i in idx]
        _check_unique(tuple(names), "rearrange")
        if ellipses:
            rest = [i for i in range(self.ndim) if i not in set(idx)]
            e = ellipses[0]
            perm = idx[:e] + rest + idx[e:]
        else:
            if len(idx) != self.ndim:
                missing = [a.name for i, a in enumerate(self.axes) if i not in set(idx)]
                raise errors.AxisSelectorError(
                    f"rearrange: order {tuple(names)} leaves out axes {tuple(missing)}; "
                    "name every axis or use '...' for the rest."
                )
            perm = idx
        return self._permute(perm)

    def _permute(self, perm: Sequence[int]) -> NamedArray:
        perm = tuple(perm)
        if perm == tuple(range(self.ndim)):
            return self
        return wrap(jnp.transpose(self.array, perm), tuple(self.axes[i] for i in perm))

    def rename(self, mapping: Mapping[AxisSelector, str | Axis]) -> NamedArray:
        """Rename axes: ``x.rename({"old": "new"})``; sizes are kept."""
        if not isinstance(mapping, Mapping):
            raise errors.AxisSelectorError(
                f"rename: expected a {{old: new}} mapping, got {type(mapping).__name__} {mapping!r}."
            )
        new = list(self.axes)
        for old, to in mapping.items():
            i = self._index_of(old)
            if not isinstance(to, (str, Axis)):
                raise errors.AxisSelectorError(
                    f"rename: the new name of {axis_name(old)!r} must be a str or an Axis, got {type(to).__name__} {to!r}."
                )
            to_name = axis_name(to)
            if isinstance(to, Axis) and to.size != new[i].size:
                raise errors.AxisSizeError(
                    f"rename: axis {new[i].name!r} has size {new[i].size} but was renamed to {to!r}."
                )
            new[i] = Axis(to_name, new[i].size)
        _check_unique(tuple(a.name for a in new), "rename")
        return wrap(self.array, tuple(new))

    def astype(self, dtype: Any) -> NamedArray:
        """The same axes, the data converted to ``dtype``."""
        return wrap(self.array.astype(check_dtype(dtype, "astype")), self.axes)

    def scalar(self) -> jax.Array:
        """The 0-d JAX array held by an array of size one (any axes of size 1 are dropped)."""
        if self.size != 1:
            raise errors.ShapeMismatchError(
                f"scalar(): array has axes {format_axes(self.axes)} (size {self.size}); reduce or index it to size 1 first."
            )
        return jnp.reshape(self.array, ())

    def item(self) -> Any:
        """The single element as a Python scalar (size-one arrays only; not under tracing)."""
        return self.scalar().item()

    def __getitem__(self, key: Any) -> NamedArray:
        """Index by name: ``x["batch", 0]``, ``x["batch", 1:3, "feature", 2]`` or ``x[{"batch": 0}]``.

        An integer drops the axis; a slice keeps it (resized). A Python int out of range raises
        :class:`~distmap.errors.AxisIndexError`. A traced index (a 0-d integer array under
        ``jax.jit``) cannot be checked, since its value is not known when the program is built:
        it follows JAX's rule for out-of-bound indices, so a negative one counts from the end and
        one still out of range is clamped to the nearest end (``x["batch", 9]`` of a ``batch`` of
        size 4 gives the last row, not an error). Check the index yourself where that matters,
        e.g. with ``jax.experimental.checkify``.

        Example:
            >>> import distmap, jax, jax.numpy as jnp
            >>> x = distmap.named(jnp.arange(4), "batch")
            >>> jax.jit(lambda i: x["batch", i])(9).item()  # clamped, as in JAX
            3
        """
        if isinstance(key, Mapping):
            pairs = list(key.items())
        elif isinstance(key, tuple) and len(key) % 2 == 0 and len(key) > 0:
            pairs = [(key[i], key[i + 1]) for i in range(0, len(key), 2)]
        else:
            raise errors.AxisSelectorError(
                f"index a NamedArray by name: x['axis', i], x['a', i, 'b', j:k] or x[{{'axis': i}}]; got {key!r} "
                f"(axes: {self.axis_names})."
            )
        return _index(self, pairs)

    # -------------------------------------------------------------- operators
    def __neg__(self) -> NamedArray:
        return wrap(-self.array, self.axes)

    def __pos__(self) -> NamedArray:
        return self

    def __abs__(self) -> NamedArray:
        return wrap(jnp.abs(self.array), self.axes)

    def __invert__(self) -> NamedArray:
        return wrap(~self.array, self.axes)

    def __matmul__(self, other: Any) -> NamedArray:
        raise errors.ArgumentTypeError(
            f"x @ y on NamedArrays: a contraction needs the axes to sum over by name; use "
            f"distmap.dot(x, y, axis=...) (x has axes {self.axis_names}) or distmap.einsum."
        )

    __rmatmul__ = __matmul__


def _make_binary(op: Callable[[Any, Any], Any], name: str) -> tuple[Callable, Callable]:
    def forward(self: NamedArray, other: Any) -> NamedArray:
        return binary_op(op, self, other, name)

    def reverse(self: NamedArray, other: Any) -> NamedArray:
        return binary_op(op, other, self, name)

    forward.__name__ = f"__{name}__"
    reverse.__name__ = f"__r{name}__"
    return forward, reverse


for _name, _op in [
    ("add", operator.add),
    ("sub", operator.sub),
    ("mul", operator.mul),
    ("truediv", operator.truediv),
    ("floordiv", operator.floordiv),
    ("mod", operator.mod),
    ("pow", operator.pow),
    ("and", operator.and_),
    ("or", operator.or_),
    ("xor", operator.xor),
    ("lshift", operator.lshift),
    ("rshift", operator.rshift),
]:
    _f, _r = _make_binary(_op, _name)
    setattr(NamedArray, f"__{_name}__", _f)
    setattr(NamedArray, f"__r{_name}__", _r)

for _name, _op in [
    ("lt", operator.lt),
    ("le", operator.le),
    ("gt", operator.gt),
    ("ge", operator.ge),
    ("eq", operator.eq),
    ("ne", operator.ne),
]:
    _f, _ = _make_binary(_op, _name)
    setattr(NamedArray, f"__{_name}__", _f)


# --------------------------------------------------------------------- pytree
# Every jit dispatch flattens each NamedArray argument and unflattens each NamedArray
# result, so both are kept to a minimum. Each instance stores its own flattened form,
# ``((array,), axes)``, in the ``_tree`` slot: the registered flatten function is then
# ``operator.attrgetter("_tree")``, which JAX calls from C++ without entering a Python
# frame. Unflattening sets the three slots through their descriptors.
_new = object.__new__
_set_array = NamedArray.__dict__["array"].__set__
_set_axes = NamedArray.__dict__["axes"].__set__
_set_tree = NamedArray.__dict__["_tree"].__set__


def _flatten_with_keys(x: NamedArray):
    return ((_ARRAY_KEY, x.array),), x.axes


def _unflatten(axes: tuple[Axis, ...], children: Iterable[Any]) -> NamedArray:
    kids = children if type(children) is tuple else tuple(children)
    out = _new(NamedArray)
    _set_array(out, kids[0])
    _set_axes(out, axes)
    _set_tree(out, (kids, axes))
    return out


_ARRAY_KEY = jax.tree_util.GetAttrKey("array")
jax.tree_util.register_pytree_with_keys(
    NamedArray, _flatten_with_keys, _unflatten, flatten_func=operator.attrgetter("_tree")
)


# ------------------------------------------------------------------- helpers
def wrap(array: Any, axes: tuple[Axis, ...]) -> NamedArray:
    """Build a NamedArray without validation, for results whose axes are known to be right."""
    out = _new(NamedArray)
    _set_array(out, array)
    _set_axes(out, axes)
    _set_tree(out, ((array,), axes))
    return out


def _stale(x: NamedArray) -> None:
    """Raise for a NamedArray whose data no longer has its axes' rank: what a raw ``jax.vmap`` leaves."""
    raise errors.ShapeMismatchError(
        f"this NamedArray has axes {format_axes(x.axes)} but its data has shape {tuple(x.array.shape)}: it was "
        "probably passed through jax.vmap (or another transformation that maps the data but not the names). "
        "Map by name with distmap.vmap(fn, axis) instead."
    )


def format_axes(axes: Sequence[Axis]) -> str:
    return "{" + ", ".join(f"{a.name!r}: {a.size}" for a in axes) + "}"


def _check_unique(names: tuple[str, ...], where: str) -> None:
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise errors.DuplicateAxisError(f"{where}: axis name(s) {dup} appear more than once in {names}.")


def check_dtype(dtype: Any, fn: str) -> Any:
    """``dtype`` as given, once numpy has understood it (``None`` passes: the default)."""
    if dtype is not None:
        try:
            jnp.dtype(dtype)
        except TypeError as e:
            raise errors.ArgumentTypeError(f"{fn}: dtype {dtype!r} is not a dtype ({e}).") from None
    return dtype


def _is_ml_dtype(dtype: np.dtype) -> bool:
    """A number type numpy keeps as raw bytes but JAX computes with (``bfloat16``, the ``float8`` family ...)."""
    return dtype.type.__module__.startswith("ml_dtypes")


def as_jax_array(value: Any, fn: str) -> jax.Array:
    """``jnp.asarray(value)`` for array data (numbers, bools, nested lists, numpy arrays); anything else raises.

    JAX holds numbers only: an object array, strings or a ragged list would otherwise end in JAX's
    staging error or numpy's, neither of which names the call.
    """
    if isinstance(value, NamedArray):
        raise errors.ArgumentTypeError(f"{fn}: got a NamedArray; use its .array, or .rename/.rearrange to change its axes.")
    if isinstance(value, (str, bytes)):
        raise errors.ArgumentTypeError(f"{fn}: expected array data (numbers), got the {type(value).__name__} {value!r}.")
    try:
        host = value if isinstance(value, np.ndarray) else np.asarray(value)
    except (ValueError, TypeError) as e:
        raise errors.ArgumentTypeError(
            f"{fn}: could not make an array of the {type(value).__name__} given ({e}); nested lists must be "
            "rectangular and hold numbers."
        ) from None
    if host.dtype.kind in "OUS" or (host.dtype.kind == "V" and not _is_ml_dtype(host.dtype)):
        raise errors.ArgumentTypeError(
            f"{fn}: JAX arrays hold numbers and bools, but this array has dtype {host.dtype} "
            f"({'object' if host.dtype.kind == 'O' else 'strings or raw bytes'}); convert it, e.g. "
            "np.asarray(a, dtype=np.float32)."
        )
    return jnp.asarray(value)


def named(array: Any, axes: AxisSelection) -> NamedArray:
    """Give an array names: ``axes`` is a name, an ``Axis``, or a sequence or mapping of them.

    Names without sizes take theirs from the array; sizes that are given are checked.

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> distmap.named(jnp.zeros((2, 3)), ("batch", "feature")).shape
        {'batch': 2, 'feature': 3}
    """
    if isinstance(array, NamedArray):
        raise errors.AxisSelectorError(
            f"named(): the array already has axes {array.axis_names}; use .rename or .rearrange."
        )
    if not hasattr(array, "shape") or isinstance(array, np.ndarray) or isinstance(array, numbers.Number):
        array = as_jax_array(array, "named()")
    elif not hasattr(array, "dtype"):
        raise errors.ArgumentTypeError(f"named(): expected an array, got {type(array).__name__}.")
    parsed = parse_selection(axes, what="named(axes=...)")
    shape = tuple(array.shape)
    if len(parsed) != len(shape):
        raise errors.ShapeMismatchError(
            f"named(): array of shape {shape} has {len(shape)} dimension(s), but {len(parsed)} axes were given: "
            f"{tuple(n for n, _ in parsed)}."
        )
    out = []
    for (name, size), dim in zip(parsed, shape):
        if size is not None and size != dim:
            raise errors.ShapeMismatchError(
                f"named(): axis {name!r} was given size {size} but the array has size {dim} there (shape {shape})."
            )
        out.append(Axis(name, dim))
    return wrap(array, tuple(out))


def broadcast_axes(*axes_lists: Sequence[Axis], where: str = "broadcast") -> tuple[Axis, ...]:
    """The union of several axis tuples, in order of first appearance; sizes must agree."""
    seen: dict[str, int] = {}
    out: list[Axis] = []
    for axes in axes_lists:
        for a in axes:
            size = seen.get(a.name)
            if size is None:
                seen[a.name] = a.size
                out.append(a)
            elif size != a.size:
                raise errors.AxisSizeError(
                    f"{where}: axis {a.name!r} has size {size} in one operand and {a.size} in another; "
                    "arrays broadcast by name must agree on each shared axis."
                )
    return tuple(out)


def align(x: NamedArray, axes: tuple[Axis, ...], what: str = "the operand") -> jax.Array:
    """``x.array`` transposed and reshaped so it broadcasts against ``axes`` (missing axes become size 1).

    Every axis of ``x`` must be in ``axes`` with the same size; ``what`` names ``x`` in the error otherwise.
    """
    if getattr(x.array, "ndim", x.ndim) != x.ndim:
        _stale(x)
    if x.axes == axes:
        return x.array
    pos = {a.name: i for i, a in enumerate(axes)}
    for a in x.axes:
        i = pos.get(a.name)
        if i is None:
            raise errors.AxisNotFoundError(
                f"{what} has axis {a.name!r}, which is not among the target axes {tuple(b.name for b in axes)}."
            )
        if axes[i].size != a.size:
            raise errors.AxisSizeError(
                f"{what} has axis {a.name!r} of size {a.size}, but it has size {axes[i].size} in the target "
                f"{format_axes(axes)}; arrays combined by name must agree on each shared axis."
            )
    order = sorted(range(x.ndim), key=lambda i: pos[x.axes[i].name])
    arr = x.array
    if order != list(range(x.ndim)):
        arr = jnp.transpose(arr, order)
    if x.ndim != len(axes):
        # Broadcast to the full shape with one broadcast_in_dim, not a reshape to size-1 dimensions: on a
        # mesh, XLA keeps a split operand split through broadcast_in_dim, where the reshape (and the
        # implicit broadcast of a size-1 dimension) can cost it an all-gather per use.
        dims = tuple(sorted(pos[a.name] for a in x.axes))
        arr = jax.lax.broadcast_in_dim(arr, tuple(a.size for a in axes), dims)
    return arr


def scalar_operand(x: Any, where: str) -> Any:
    """A Python/numpy scalar or a 0-d array, returned as is; anything else raises, naming ``where``."""
    if isinstance(x, (numbers.Number, np.generic)):
        return x
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        if tuple(x.shape) == ():
            return x
        raise errors.ShapeMismatchError(
            f"{where} is an unnamed array of shape {tuple(x.shape)}; a NamedArray with axes combines with "
            "NamedArrays, scalars and arrays of shape () only (named axes never broadcast by position). Name its "
            "axes with distmap.named first."
        )
    raise errors.ArgumentTypeError(f"{where} must be a NamedArray or a scalar, got {type(x).__name__} {x!r}.")


def is_named_array(x: Any) -> bool:
    """Whether ``x`` is a :class:`NamedArray` (for ``is_leaf=`` and ``is_scanned=`` filters).

    Example:
        >>> import distmap, jax.numpy as jnp
        >>> distmap.is_named_array(distmap.zeros({"batch": 2})), distmap.is_named_array(jnp.zeros(2))
        (True, False)
    """
    return isinstance(x, NamedArray)


def _unnamed_nonscalar(x: Any) -> bool:
    return not isinstance(x, NamedArray) and hasattr(x, "shape") and hasattr(x, "dtype") and tuple(x.shape) != ()


def binary_op(op: Callable[[Any, Any], Any], a: Any, b: Any, name: str = "op") -> Any:
    """Apply an elementwise ``op`` to two operands, at least one named, broadcasting by name.

    A NamedArray with no axes is a scalar: next to an unnamed array it acts as one, and the result
    is unnamed, as in Haliax (``unnamed + x.sum()``). A NamedArray with axes and an unnamed array of
    rank >= 1 are refused: named axes never broadcast by position.
    """
    a_named = isinstance(a, NamedArray)
    b_named = isinstance(b, NamedArray)
    if a_named and b_named:
        if a.axes == b.axes:
            return wrap(op(a.array, b.array), a.axes)
        axes = broadcast_axes(a.axes, b.axes, where=f"operator {name!r}")
        return wrap(op(align(a, axes), align(b, axes)), axes)
    if a_named and not a.axes and _unnamed_nonscalar(b):
        return op(a.array, b)
    if b_named and not b.axes and _unnamed_nonscalar(a):
        return op(a, b.array)
    if a_named:
        return wrap(op(a.array, scalar_operand(b, f"operator {name!r}: the right operand")), a.axes)
    return wrap(op(scalar_operand(a, f"operator {name!r}: the left operand"), b.array), b.axes)


def _index(x: NamedArray, pairs: list[tuple[Any, Any]]) -> NamedArray:
    idx: list[Any] = [slice(None)] * x.ndim
    new_axes: list[Axis | None] = list(x.axes)
    seen = set()
    for sel, ix in pairs:
        i = x._index_of(sel)
        ax = x.axes[i]
        if ax.name in seen:
            raise errors.DuplicateAxisError(f"indexing: axis {ax.name!r} indexed more than once.")
        seen.add(ax.name)
        if isinstance(ix, slice):
            try:
                start, stop, step = ix.indices(ax.size)
            except (TypeError, ValueError) as e:
                raise errors.AxisSelectorError(
                    f"indexing axis {ax.name!r}: bad slice {ix!r} ({e}); slice bounds must be ints "
                    "(for a traced start use jax.lax.dynamic_slice_in_dim on x.array)."
                ) from None
            idx[i] = ix
            new_axes[i] = Axis(ax.name, len(range(start, stop, step)))
        elif isinstance(ix, (bool, np.bool_)):
            raise errors.AxisSelectorError(f"indexing axis {ax.name!r}: a bool is not an index.")
        elif isinstance(ix, (numbers.Integral, np.integer)):
            ix = int(ix)
            if not -ax.size <= ix < ax.size:
                raise errors.AxisIndexError(f"index {ix} is out of range for axis {ax.name!r} of size {ax.size}.")
            idx[i] = ix % ax.size
            new_axes[i] = None
        elif hasattr(ix, "shape") and tuple(ix.shape) == () and jnp.issubdtype(ix.dtype, jnp.integer):
            if not isinstance(ix, jax.core.Tracer) and not -ax.size <= int(ix) < ax.size:
                # A concrete 0-d array is checked as an int is; only a traced one follows JAX's clamping.
                raise errors.AxisIndexError(f"index {int(ix)} is out of range for axis {ax.name!r} of size {ax.size}.")
            idx[i] = ix
            new_axes[i] = None
        else:
            raise errors.AxisSelectorError(
                f"indexing axis {ax.name!r}: expected an int, a slice or a 0-d integer array, got "
                f"{type(ix).__name__} {ix!r}; use distmap.take for array indices."
            )
    return wrap(x.array[tuple(idx)], tuple(a for a in new_axes if a is not None))


# ------------------------------------------------------------------- methods
# NamedArray's reduction methods (``.sum()``, ``.mean()``, ...) delegate to functions of
# modules that import this one, so they are attached from there; importing that module last,
# here, means no NamedArray is ever seen without them, however distmap was imported.
from distmap._src import array_methods  # noqa: E402, F401
