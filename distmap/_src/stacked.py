"""``Stacked``: N copies of an equinox Module stacked along a named axis, and ``BlockSeq``, its loop twin.

Build one by vmapping the constructor (``Stacked.init``); apply every copy to the
same input in parallel (``.vmap``, an ensemble) or one after another (``.fold`` /
``.scan``, layers, one ``jax.lax.scan`` that traces the layer once). Extra arguments
to ``fold``/``scan`` follow :func:`distmap.scan`'s rules: a NamedArray carrying the
stacked axis, or an unnamed array of rank >= 1 (a split key, a per-layer mask), is
sliced one element per layer; anything else goes whole to every layer.

``BlockSeq`` holds the same layers as a Python list and runs them in a Python loop
with the same slicing rules, so a stacked model can be debugged layer by layer
(``stacked.as_block_seq()``, ``BlockSeq.carries``).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Generic, TypeVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from distmap import errors
from distmap._src.map import checkpoint as ckpt
from distmap._src.axis import Axis, SizedAxes, to_axes
from distmap._src.leaves import is_array
from distmap._src.map import scan as scan_lib
from distmap._src.map import specs
from distmap._src.map.api import vmap
from distmap._src.named import NamedArray, is_named_array, wrap

M = TypeVar("M", bound=eqx.Module)


def _builder(module: Any, what: str) -> Callable[..., Any]:
    """What ``Stacked.init(axis, module)`` calls once per copy: ``module.init`` where the class defines a
    static or class method ``init`` (Haliax's form), else ``module`` itself (a class or any callable)."""
    if isinstance(module, type):
        for klass in module.__mro__:
            found = klass.__dict__.get("init")
            if isinstance(found, (staticmethod, classmethod)):
                return found.__get__(None, module)  # module.init, as attribute look-up binds it
        return module
    if not callable(module):
        raise TypeError(
            f"{what}: module must be an equinox Module class (or a function building one), "
            f"got {type(module).__name__} {module!r}."
        )
    return module


def _one_axis(axis: Any, what: str) -> Axis:
    axes = to_axes(axis, what=f"{what}(axis=...)")
    if len(axes) != 1:
        raise errors.AxisSelectorError(
            f"{what}(axis=...): expected one axis to stack along, got {len(axes)} ({[a.name for a in axes]})."
        )
    return axes[0]


def _is_key(leaf: Any) -> bool:
    return is_array(leaf) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _check_keys(axis: Axis, args: tuple, kwargs: dict, what: str) -> None:
    """Refuse a single PRNG key: vmap would give it to every copy, making ``axis.size`` identical copies."""
    flat, _ = jax.tree_util.tree_flatten_with_path((args, kwargs), is_leaf=is_named_array)
    for path, leaf in flat:
        one_typed = _is_key(leaf) and leaf.ndim == 0
        one_raw = is_array(leaf) and leaf.shape == (2,) and leaf.dtype == np.uint32 and axis.size != 2
        if one_typed or one_raw:
            where = specs.path_str(path)
            kind = "is a single PRNG key" if one_typed else "looks like a single raw PRNG key (uint32[2])"
            raise errors.MappingError(
                f"{what}: {where} {kind}, so all {axis.size} copies along {axis.name!r} would be "
                f"built from it and be identical. Pass one key per copy: jax.random.split(key, {axis.size})."
            )


class Stacked(eqx.Module, Generic[M]):
    """``axis.size`` copies of a Module, stacked along the named ``axis``.

    Array fields of ``stacked`` carry the axis: NamedArrays by name, unnamed arrays at dim 0.
    ``checkpoint`` (see :class:`distmap.Checkpoint`) and ``unroll`` apply to ``fold``/``scan``;
    ``Block`` and ``Layers`` are Haliax's names for ``axis``, ``gradient_checkpointing`` for ``checkpoint``.

    Example:
        >>> import distmap, equinox as eqx, jax
        >>> class Scale(eqx.Module):
        ...     w: distmap.NamedArray
        ...     def __init__(self, key):
        ...         self.w = distmap.random.normal(key, {"feature": 3})
        ...     def __call__(self, x):
        ...         return x * self.w
        >>> Layers = distmap.Axis("layer", 4)
        >>> net = distmap.Stacked.init(Layers, Scale)(key=jax.random.split(jax.random.key(0), 4))
        >>> x = distmap.ones({"feature": 3})
        >>> net.vmap(x).axis_names, net.fold(x).axis_names
        (('layer', 'feature'), ('feature',))
    """

    stacked: M
    axis: Axis = eqx.field(static=True)
    checkpoint: ckpt.Checkpoint | ckpt.ScanCheckpointPolicy | None = eqx.field(static=True, default=None)
    unroll: int | bool = eqx.field(static=True, default=1)

    @property
    def Block(self) -> Axis:  # noqa: N802 (Haliax's name)
        """The stacked axis (Haliax's name for :attr:`axis`)."""
        return self.axis

    @property
    def Layers(self) -> Axis:  # noqa: N802 (Haliax's name)
        """The stacked axis (Haliax's other name for :attr:`axis`)."""
        return self.axis

    @property
    def gradient_checkpointing(self) -> ckpt.Checkpoint | ckpt.ScanCheckpointPolicy | None:
        """The checkpoint policy (Haliax's name for :attr:`checkpoint`)."""
        return self.checkpoint

    @classmethod
    def init(
        cls,
        axis: SizedAxes,
        module: Callable[..., M],
        *,
        checkpoint: ckpt.CheckpointSpec = None,
        unroll: int | bool = 1,
        gradient_checkpointing: ckpt.CheckpointSpec = None,
        prevent_cse: bool | None = None,
        **vmap_options: Any,
    ) -> Callable[..., Stacked[M]]:
        """A constructor that builds ``axis.size`` copies of ``module`` by vmapping it over ``axis``.

        ``module`` is an equinox Module class (its ``init`` static or class method when it has
        one, as in Haliax, else its constructor) or any function returning a Module.
        Arguments follow :func:`distmap.vmap`'s default spec: arrays (such as keys split
        with ``jax.random.split(key, n)``) are mapped on dim 0, NamedArrays by name,
        everything else is shared. A single PRNG key is refused (every copy would be the same).
        ``gradient_checkpointing`` is Haliax's name for ``checkpoint``, and means what it means in Haliax:
        ``True`` keeps only the carry between layers (``"carry"``). ``prevent_cse`` overrides the policy's.

        Example:
            >>> import distmap, equinox as eqx, jax
            >>> class Bias(eqx.Module):
            ...     b: jax.Array
            ...     @classmethod
            ...     def init(cls, key):
            ...         return cls(jax.random.normal(key, (2,)))
            >>> distmap.Stacked.init(distmap.Axis("layer", 3), Bias)(jax.random.split(jax.random.key(0), 3)).stacked.b.shape
            (3, 2)
        """
        ax = _one_axis(axis, "Stacked.init")
        build_one = _builder(module, "Stacked.init")
        policy = _policy("Stacked.init", checkpoint, gradient_checkpointing, prevent_cse)
        unroll = scan_lib.check_unroll(unroll, "Stacked.init")
        explicit_specs = any(k in vmap_options for k in ("default", "args", "kwargs"))

        def build(*args: Any, **kwargs: Any) -> Stacked[M]:
            if not explicit_specs:
                _check_keys(ax, args, kwargs, "Stacked.init")
            return cls(vmap(build_one, ax, **vmap_options)(*args, **kwargs), ax, policy, unroll)

        return build

    # ------------------------------------------------------------------ in parallel

    def vmap(self, *args: Any, **kwargs: Any) -> Any:
        """Apply every copy to the same inputs, in parallel; outputs carry the stacked axis at the front.

        Inputs are broadcast to every copy (unnamed arrays included); a NamedArray input that
        carries the stacked axis is mapped along it, one slice per copy.
        """
        return _vmapper(self.axis)(type(self.stacked).__call__, self.stacked, args, kwargs)

    def vmap_via(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """:meth:`vmap` calling ``fn(layer, *args, **kwargs)`` (for example an unbound method) per copy."""
        mapped, stacked = _vmapper(self.axis), self.stacked
        return lambda *args, **kwargs: mapped(fn, stacked, args, kwargs)

    # ------------------------------------------------------------------ in sequence

    def fold(self, x: Any, *args: Any, unroll: int | bool | None = None, **kwargs: Any) -> Any:
        """``x = layer(x, *args_i, **kwargs_i)`` for each copy in order; returns the final ``x``.

        ``args_i`` is layer ``i``'s slice of ``args`` (see the module docstring); runs as one
        ``jax.lax.scan``, so it traces the layer once. ``unroll`` (as in ``jax.lax.scan``: an int,
        True or False) overrides the stack's for this call; it is not passed to the layer.
        """
        return _loop(self, type(self.stacked).__call__, "Stacked.fold", False, unroll)(x, *args, **kwargs)

    def scan(self, x: Any, *args: Any, unroll: int | bool | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """Like :meth:`fold`, for layers that return ``(carry, y)``; returns ``(carry, ys)``.

        ``ys`` carry the stacked axis at the front: NamedArrays by name, unnamed arrays at dim 0.
        """
        return _loop(self, type(self.stacked).__call__, "Stacked.scan", True, unroll)(x, *args, **kwargs)

    def fold_via(self, fn: Callable[..., Any], *, unroll: int | bool | None = None) -> Callable[..., Any]:
        """:meth:`fold` calling ``fn(layer, x, *args, **kwargs)`` per layer, e.g. ``Layer.intermediate``."""
        return _loop(self, fn, "Stacked.fold", False, unroll)

    def scan_via(self, fn: Callable[..., tuple[Any, Any]], *, unroll: int | bool | None = None) -> Callable[..., tuple[Any, Any]]:
        """:meth:`scan` calling ``fn(layer, x, *args, **kwargs)`` per layer; ``fn`` returns ``(x, y)``."""
        return _loop(self, fn, "Stacked.scan", True, unroll)

    # ------------------------------------------------------------------ layers one by one

    def get_layer(self, i: int) -> M:
        """Copy ``i`` (negative counts from the end) as a plain Module, without the stacked axis."""
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"Stacked.get_layer: expected an int layer index, got {type(i).__name__} {i!r}.")
        n = self.axis.size
        if not -n <= i < n:
            raise IndexError(f"Stacked.get_layer({i}): the stack has {n} layers along {self.axis.name!r}.")
        (layer,), _ = _sliced(self).index(int(i) % n)
        return layer

    def unstacked(self) -> list[M]:
        """The copies as a list of separate Modules."""
        sliced = _sliced(self)
        return [sliced.index(i)[0][0] for i in range(self.axis.size)]

    def as_block_seq(self) -> BlockSeq[M]:
        """The same layers as a :class:`BlockSeq`: a Python loop giving the same results, layer by layer."""
        return BlockSeq(self.unstacked(), self.axis, self.checkpoint)

    # ------------------------------------------------------------------ state dicts

    def to_state_dict(self, prefix: str = "layers") -> dict[str, Any]:
        """Per-layer arrays by name, ``{f"{prefix}.{i}.{field path}": array}``, as unstacked checkpoints hold them.

        NamedArrays are stored as their arrays (the axes live in the Module); non-array fields are not stored.

        Example:
            >>> import distmap, equinox as eqx, jax
            >>> keys = jax.random.split(jax.random.key(0), 2)
            >>> net = distmap.Stacked.init(distmap.Axis("layer", 2), eqx.nn.Linear)(3, 4, key=keys)
            >>> sorted(net.to_state_dict())
            ['layers.0.bias', 'layers.0.weight', 'layers.1.bias', 'layers.1.weight']
        """
        out: dict[str, Any] = {}
        for i, layer in enumerate(self.unstacked()):
            out.update(_flat_arrays(layer, f"{prefix}.{i}" if prefix else str(i)))
        return out

    def from_state_dict(self, state: Mapping[str, Any], prefix: str = "layers") -> Stacked[M]:
        """This stack with its arrays read from ``state`` (the inverse of :meth:`to_state_dict`).

        Every per-layer name must be present with the shape this stack has; names under ``prefix``
        that this stack does not have are refused, so a mismatched checkpoint does not load silently.
        """
        pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.(.+)$" if prefix else r"^(\d+)\.(.+)$")
        template = _flat_arrays(self.get_layer(0), "")
        known = {k.lstrip(".") for k in template}
        for key in state:
            m = pat.match(key)
            if m and (int(m.group(1)) >= self.axis.size or m.group(2) not in known):
                raise KeyError(
                    f"Stacked.from_state_dict: {key!r} is not a field of this {self.axis.size}-layer stack "
                    f"(per-layer fields: {sorted(known)})."
                )
        leaves, treedef = jax.tree_util.tree_flatten_with_path(self.stacked, is_leaf=is_named_array)
        new = []
        for path, leaf in leaves:
            name = _path_name(path)
            if not (isinstance(leaf, NamedArray) or is_array(leaf)):
                new.append(leaf)
                continue
            arr = leaf.array if isinstance(leaf, NamedArray) else leaf
            per = []
            for i in range(self.axis.size):
                key = f"{prefix}.{i}.{name}" if prefix else f"{i}.{name}"
                if key not in state:
                    raise KeyError(f"Stacked.from_state_dict: {key!r} is missing from the state dict.")
                per.append(jnp.asarray(state[key]))
            if isinstance(leaf, NamedArray):
                d = leaf.axis_indices(self.axis.name) if self.axis.name in leaf.axis_names else None
            else:
                d = 0 if arr.ndim > 0 else None
            value = per[0] if d is None else jnp.stack(per, axis=d)
            if value.shape != arr.shape:
                raise errors.ShapeMismatchError(
                    f"Stacked.from_state_dict: {prefix}.*.{name} stacks to shape {value.shape}, but this stack's "
                    f"field has shape {arr.shape}."
                )
            value = value.astype(arr.dtype)
            new.append(wrap(value, leaf.axes) if isinstance(leaf, NamedArray) else value)
        stacked = jax.tree_util.tree_unflatten(treedef, new)
        return Stacked(stacked, self.axis, self.checkpoint, self.unroll)


def _policy(what: str, checkpoint: Any, gradient_checkpointing: Any, prevent_cse: bool | None) -> Any:
    """The checkpoint policy of ``Stacked.init``/``BlockSeq.init``, from either spelling, with ``prevent_cse`` applied."""
    if gradient_checkpointing is not None and checkpoint is not None:
        raise errors.MappingError(f"{what}: pass checkpoint= or gradient_checkpointing= (Haliax's name), not both.")
    policy = ckpt.as_checkpoint(checkpoint if checkpoint is not None else gradient_checkpointing,
                                what=f"{what}(checkpoint=...)")
    if prevent_cse is not None and not isinstance(prevent_cse, bool):
        raise errors.MappingError(f"{what}(prevent_cse=...): expected a bool, got {prevent_cse!r}.")
    if prevent_cse is not None and policy is not None:
        policy = dataclasses.replace(policy, prevent_cse=prevent_cse)
    return policy


def _loop(stack: Stacked, fn: Callable[..., Any], what: str, returns_y: bool,
          unroll: int | bool | None = None) -> Callable[..., Any]:
    # A function, not a method: an equinox Module builds a bound-method Module on every method access
    # (tens of microseconds), which Stacked's own calls need not pay on every trace.
    # (type(unroll) in the key: lru_cache would take True for 1)
    unroll = stack.unroll if unroll is None else scan_lib.check_unroll(unroll, what)
    looped = _stack_loop(fn, type(stack.stacked).__name__, stack.axis, what, stack.checkpoint, unroll,
                         type(unroll), returns_y)  # type: ignore[arg-type]  # a class is hashable (mypy: not type[int])
    stacked = stack.stacked
    return lambda x, *args, **kwargs: looped(x, stacked, *args, **kwargs)


@functools.lru_cache(maxsize=512)
def _stack_loop(fn: Callable[..., Any], type_name: str, axis: Axis, what: str, checkpoint: Any, unroll: Any,
                unroll_type: type, returns_y: bool) -> Callable[..., Any]:
    """The loop of ``Stacked.fold``/``scan`` running ``fn(layer, x, ...)``: built once per method and stack shape.

    The stack is the loop's first sliced argument; the default spec slices its unnamed arrays on
    dim 0 (rank-0 arrays cannot carry the axis: they are shared values, such as a float field
    traced by ``jax.jit``) and its NamedArrays by name.
    """

    def step(carry: Any, layer: Any, *args: Any, **kwargs: Any) -> Any:
        return fn(layer, carry, *args, **kwargs)

    label = f"layer {type_name}.{getattr(fn, '__name__', 'fn')}"
    return scan_lib.make_loop(step, axis, what, specs.default_spec, (), None, checkpoint, False, unroll,
                          returns_y=returns_y, label=label, arg_label=_stacked_arg)


@functools.lru_cache(maxsize=64)
def _vmapper(axis: Axis) -> Callable[..., Any]:
    # fn is passed as a static argument and the stack's arrays take the default spec: one map per axis.
    return vmap(_apply_via, axis, default=None, args=(None, specs.default_spec))


def _sliced(stack: Stacked) -> scan_lib.Sliced:
    return scan_lib.slice_args("Stacked", stack.axis.name, stack.axis.size, (stack.stacked,), {},
                               arg_label=_stacked_arg)


def _stacked_arg(i: int) -> str:
    # Position 0 of the loop is the stack itself; the caller's extra arguments follow it.
    return "the stacked layers" if i == 0 else f"args[{i - 1}]"


def _path_name(path: Sequence[Any]) -> str:
    parts = []
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            parts.append(k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            parts.append(str(k.idx))
        elif isinstance(k, jax.tree_util.DictKey):
            parts.append(str(k.key))
        else:
            parts.append(str(getattr(k, "key", k)))
    return ".".join(parts)


def _flat_arrays(module: Any, prefix: str) -> dict[str, Any]:
    out = {}
    for path, leaf in jax.tree_util.tree_flatten_with_path(module, is_leaf=is_named_array)[0]:
        if isinstance(leaf, NamedArray):
            leaf = leaf.array
        elif not is_array(leaf):
            continue
        out[f"{prefix}.{_path_name(path)}"] = leaf
    return out


class BlockSeq(eqx.Module, Generic[M]):
    """Layers as a Python list, run in a Python loop: :class:`Stacked`'s twin for debugging.

    ``fold``, ``scan``, ``vmap`` and the ``*_via`` forms slice extra arguments per layer exactly
    as ``Stacked`` does and give the same results; ``carries`` returns the carry after every
    layer. ``stack()`` turns it back into a ``Stacked``.

    Example:
        >>> import distmap, equinox as eqx, jax
        >>> keys = jax.random.split(jax.random.key(0), 3)
        >>> net = distmap.Stacked.init(distmap.Axis("layer", 3), eqx.nn.Linear)(2, 2, key=keys)
        >>> seq = net.as_block_seq()
        >>> x = jax.numpy.ones(2)
        >>> bool(jax.numpy.allclose(seq.fold(x), net.fold(x), atol=1e-6)), len(seq.carries(x))
        (True, 3)
    """

    blocks: list[M]
    axis: Axis = eqx.field(static=True)
    checkpoint: ckpt.Checkpoint | ckpt.ScanCheckpointPolicy | None = eqx.field(static=True, default=None)

    @property
    def Block(self) -> Axis:  # noqa: N802 (Haliax's name)
        """The axis the layers run along (Haliax's name for :attr:`axis`)."""
        return self.axis

    @property
    def gradient_checkpointing(self) -> ckpt.Checkpoint | ckpt.ScanCheckpointPolicy | None:
        """The checkpoint policy (Haliax's name for :attr:`checkpoint`)."""
        return self.checkpoint

    @classmethod
    def init(
        cls,
        axis: SizedAxes,
        module: Callable[..., M],
        *,
        checkpoint: ckpt.CheckpointSpec = None,
        gradient_checkpointing: ckpt.CheckpointSpec = None,
        prevent_cse: bool | None = None,
        **options: Any,
    ) -> Callable[..., BlockSeq[M]]:
        """Like :meth:`Stacked.init`, building each layer by its own call (arguments sliced as ``Stacked.init`` maps them).

        ``checkpoint`` (or ``gradient_checkpointing``) applies to ``fold``/``scan`` as in ``Stacked``: each layer
        (each block of ``every`` layers) runs under ``jax.checkpoint`` with the same policy.
        """
        ax = _one_axis(axis, "BlockSeq.init")
        build_one = _builder(module, "BlockSeq.init")
        policy = _policy("BlockSeq.init", checkpoint, gradient_checkpointing, prevent_cse)

        def build(*args: Any, **kwargs: Any) -> BlockSeq[M]:
            if not options:
                _check_keys(ax, args, kwargs, "BlockSeq.init")
            sliced = scan_lib.slice_args("BlockSeq.init", ax.name, ax.size, args, kwargs, **options, fn=build_one,
                                         arg_label=lambda i: f"args[{i}]")
            blocks = []
            for i in range(ax.size):
                a, k = sliced.index(i)
                blocks.append(build_one(*a, **k))
            return cls(blocks, ax, policy)

        return build

    def stack(self) -> Stacked[M]:
        """The layers stacked into a :class:`Stacked` along ``axis`` (with the same checkpoint policy)."""
        leaves = [jax.tree_util.tree_flatten(b, is_leaf=is_named_array) for b in self.blocks]
        treedef = leaves[0][1]
        out: list[Any] = []
        for parts in zip(*(lv for lv, _ in leaves)):
            first = parts[0]
            if isinstance(first, NamedArray):
                out.append(wrap(jnp.stack([p.array for p in parts]), (self.axis,) + first.axes))
            elif is_array(first):
                out.append(jnp.stack(parts))
            else:
                out.append(first)
        return Stacked(jax.tree_util.tree_unflatten(treedef, out), self.axis, self.checkpoint)

    def _run(self, fn: Callable[..., Any], what: str, returns_y: bool, unroll: Any,
             checkpointed: bool = True) -> Callable[..., Any]:
        """The Python loop behind ``fold``/``scan``: ``fn(layer_i, x, *args_i, **kwargs_i)`` per layer, under the
        stack's checkpoint policy. ``unroll`` is checked and has nothing to do: a Python loop is unrolled already."""
        if unroll is not None:
            scan_lib.check_unroll(unroll, what)
        n, name = len(self.blocks), self.axis.name
        lowered = None
        if checkpointed and self.checkpoint is not None:
            lowered = self.checkpoint.lower(name, n, what=f"{what} over {name!r}")

        def step(i: int, block: Any, carry: Any, a: tuple, k: dict) -> Any:
            carry, (block, a, k) = ckpt.tag_step(lowered, name, carry, (block, a, k))
            out = fn(block, carry, *a, **k)
            if returns_y and not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise errors.MappingError(f"{what}: layer {i} must return a pair (carry, y), got {type(out).__name__}.")
            return tuple(out) if returns_y else (out, None)

        if lowered is not None and lowered.step:
            step = eqx.filter_checkpoint(step, policy=lowered.policy, prevent_cse=lowered.prevent_cse)

        def group(first: int, blocks: list, carry: Any, inputs: list) -> tuple[Any, list]:
            ys = []
            for j, (block, (a, k)) in enumerate(zip(blocks, inputs)):
                carry, y = step(first + j, block, carry, a, k)
                ys.append(y)
            return carry, ys

        every = 1 if lowered is None else lowered.every
        if lowered is not None and every > 1:  # blocks of `every` layers, each kept only by its incoming carry
            group = eqx.filter_checkpoint(group, prevent_cse=lowered.prevent_cse)

        def run(x: Any, *args: Any, **kwargs: Any) -> Any:
            sliced = self._per_layer(args, kwargs, what)
            ys: list = []
            for first in range(0, n, every):
                idx = range(first, first + every)
                x, got = group(first, self.blocks[first:first + every], x, [sliced.index(i) for i in idx])
                ys += got
            return (x, _stack_outputs(ys, self.axis)) if returns_y else x

        return run

    def _per_layer(self, args: tuple, kwargs: dict, what: str) -> scan_lib.Sliced:
        return scan_lib.slice_args(what, self.axis.name, self.axis.size, args, kwargs, arg_label=lambda i: f"args[{i}]")

    def fold_via(self, fn: Callable[..., Any], *, unroll: int | bool | None = None) -> Callable[..., Any]:
        """``x = fn(layer_i, x, *args_i, **kwargs_i)`` for each layer in order (``unroll`` is accepted, as in
        :meth:`Stacked.fold_via`, and changes nothing: a Python loop is unrolled already)."""
        return self._run(fn, "BlockSeq.fold", False, unroll)

    def scan_via(self, fn: Callable[..., tuple[Any, Any]], *, unroll: int | bool | None = None) -> Callable[..., tuple[Any, Any]]:
        """``x, y_i = fn(layer_i, x, *args_i, **kwargs_i)``; returns ``(x, ys)`` with ys stacked along ``axis``."""
        return self._run(fn, "BlockSeq.scan", True, unroll)

    def vmap_via(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn(layer_i, *args, **kwargs)`` for every layer (inputs broadcast), stacked along ``axis``."""

        def run(*args: Any, **kwargs: Any) -> Any:
            outs = []
            for i, block in enumerate(self.blocks):
                a, k = _take_named(args, kwargs, self.axis.name, i)
                outs.append(fn(block, *a, **k))
            return _stack_outputs(outs, self.axis)

        return run

    def fold(self, x: Any, *args: Any, unroll: int | bool | None = None, **kwargs: Any) -> Any:
        """The layers in order, as :meth:`Stacked.fold`."""
        return self._run(_call_layer, "BlockSeq.fold", False, unroll)(x, *args, **kwargs)

    def scan(self, x: Any, *args: Any, unroll: int | bool | None = None, **kwargs: Any) -> tuple[Any, Any]:
        """The layers in order, as :meth:`Stacked.scan`."""
        return self._run(_call_layer, "BlockSeq.scan", True, unroll)(x, *args, **kwargs)

    def vmap(self, *args: Any, **kwargs: Any) -> Any:
        """Every layer on the same inputs, as :meth:`Stacked.vmap`."""
        return self.vmap_via(lambda m, *a, **k: m(*a, **k))(*args, **kwargs)

    def carries(self, x: Any, *args: Any, **kwargs: Any) -> list[Any]:
        """The carry after each layer of :meth:`fold` (the last one is ``fold``'s result)."""
        out = []

        def record(m: Any, c: Any, *a: Any, **k: Any) -> Any:  # a layer (a callable Module)
            c = m(c, *a, **k)
            out.append(c)
            return c

        self._run(record, "BlockSeq.carries", False, None, checkpointed=False)(x, *args, **kwargs)
        return out

    def get_layer(self, i: int) -> M:
        """Layer ``i``."""
        return self.blocks[i]

    def unstacked(self) -> list[M]:
        """The layers, as a list."""
        return list(self.blocks)


def _call_layer(layer: Any, *args: Any, **kwargs: Any) -> Any:
    return layer(*args, **kwargs)


def _apply_via(fn: Callable[..., Any], module: Any, args: tuple, kwargs: dict) -> Any:
    # Module-level (fn passed as a static argument), so a mesh call of Stacked.vmap keys its
    # compilation on the same function every time.
    return fn(module, *args, **kwargs)


def _take_named(args: tuple, kwargs: dict, name: str, i: int) -> tuple[tuple, dict]:
    """``Stacked.vmap``'s rule: NamedArrays carrying ``name`` give element ``i``; everything else is broadcast."""

    def one(leaf: Any) -> Any:
        if isinstance(leaf, NamedArray) and name in leaf.axis_names:
            return leaf[name, i]
        return leaf

    return jax.tree_util.tree_map(one, (args, kwargs), is_leaf=is_named_array)


def _stack_outputs(outs: list[Any], axis: Axis) -> Any:
    def stack(*parts: Any) -> Any:
        if isinstance(parts[0], NamedArray):
            return wrap(jnp.stack([p.array for p in parts]), (axis,) + parts[0].axes)
        if is_array(parts[0]):
            return jnp.stack(parts)
        return parts[0]

    return jax.tree_util.tree_map(stack, *outs, is_leaf=is_named_array)
