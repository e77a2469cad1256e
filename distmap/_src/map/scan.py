"""``distmap.scan`` and ``distmap.fold``: a loop over a named axis, lowered to one ``jax.lax.scan``.

``scan(fn, axis)(carry, *xs)`` calls ``carry, y = fn(carry, *x)`` once per element of
``axis``, in order, where each ``x`` is the slice of ``xs`` at that element; it returns the
last carry and the ``y`` of every step stacked along ``axis``. ``fold`` is the same for an
``fn`` that returns only the carry.

Which leaves of ``xs`` are sliced follows ``vmap``'s rules: a NamedArray carrying ``axis``
is sliced along it wherever it sits, other NamedArrays are passed whole to every step;
unnamed leaves follow the ``default``/``args``/``kwargs`` specs (arrays of rank >= 1 on dim 0,
scalars and non-arrays passed whole). That decision is the map engine's: the loop's axis is
resolved by :func:`distmap._src.map.plan.resolve`, as one level of a ``vmap`` would be, so a
spec, a size or an argument path means the same in both. The carry is never sliced: it must
keep its structure, named axes and shapes from step to step.

On a mesh (an axis mapping and a mesh, given or current) the loop is still one
``jax.lax.scan``; every NamedArray of the carry, of the sliced arguments and of each ``y`` is
laid out by its names at each step (:func:`distmap._src.mesh.loop_pspec`), so XLA partitions
the loop body on local shards. Inside a mesh ``vmap`` the arrays are per-device already and
the loop runs on them as they are.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from distmap import errors
from distmap._src import leaves as leaves_lib
from distmap._src import mesh as mesh_lib
from distmap._src.axis import Axis, AxisSelector, parse_selection
from distmap._src.map import checkpoint as ckpt
from distmap._src.map import frames
from distmap._src.map import plan as plan_lib
from distmap._src.map import specs
from distmap._src.named import NamedArray, is_named_array, wrap


def scan(
    fn: Callable[..., tuple[Any, Any]],
    axis: AxisSelector,
    *,
    default: Any = specs.default_spec,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    checkpoint: ckpt.CheckpointSpec = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    mesh: Any = None,
    axis_mapping: Any = None,
    is_scanned: Any = None,
    remat: ckpt.CheckpointSpec = None,
) -> Callable[..., tuple[Any, Any]]:
    """Loop ``carry, y = fn(carry, *x, **kx)`` over the named ``axis``; returns ``(carry, ys)``.

    Args:
        fn: ``(carry, *x, **kx) -> (carry, y)``.
        axis: the axis to loop over: an ``Axis`` or a name (the size then comes from the inputs).
        default: the spec of unnamed leaves of the scanned arguments (as in :func:`distmap.vmap`).
        args: per-positional-argument overrides of ``default``, counted after the carry.
        kwargs: per-keyword overrides of ``default``.
        checkpoint: gradient checkpointing (see :class:`distmap.Checkpoint`): ``None``, ``True`` or
            ``"carry"`` (keep only the carry, Haliax's ``True``), ``"layer"``, an int ``k`` (keep the carry
            every ``k`` steps), a ``Checkpoint``, or Haliax's ``ScanCheckpointPolicy`` and its strings.
        reverse: loop from the last element to the first (``ys`` stay in axis order).
        unroll: steps per loop iteration, passed to ``jax.lax.scan`` (``True``: unroll fully; ``False``: 1).
        mesh, axis_mapping: on a mesh (given, or set with ``jax.set_mesh`` and
            :func:`distmap.axis_mapping`), every NamedArray of the carry, of the sliced
            arguments and of each step's ``y`` is laid out by its names at every step, so
            a stack of parameters split by the mapping (``{"embed": "model"}``) stays split
            and each step computes on local shards; XLA adds only the collectives the
            layer's operations need. The looped axis itself must stay whole. Inside a
            mesh ``vmap`` the arrays are already per-device and the loop runs on them as is.

    Returns:
        ``scanned(carry, *xs, **kxs) -> (carry, ys)``; ``ys`` carry ``axis`` at the front
        (NamedArrays by name, unnamed arrays at dim 0).

    Example:
        >>> import distmap
        >>> Step = distmap.Axis("step", 4)
        >>> def cumsum(total, x):
        ...     total = total + x
        ...     return total, total
        >>> total, running = distmap.scan(cumsum, Step)(distmap.zeros(()), distmap.arange(Step).astype(float))
        >>> total.item(), running.axis_names, running.array.tolist()
        (6.0, ('step',), [0.0, 1.0, 3.0, 6.0])
    """
    default, checkpoint = _haliax_options("scan", default, is_scanned, checkpoint, remat)
    return make_loop(fn, axis, "scan", default, args, kwargs, checkpoint, reverse, unroll, returns_y=True,
                 mesh=mesh, axis_mapping=axis_mapping)


def fold(
    fn: Callable[..., Any],
    axis: AxisSelector,
    *,
    default: Any = specs.default_spec,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    checkpoint: ckpt.CheckpointSpec = None,
    reverse: bool = False,
    unroll: int | bool = 1,
    mesh: Any = None,
    axis_mapping: Any = None,
    is_scanned: Any = None,
    remat: ckpt.CheckpointSpec = None,
) -> Callable[..., Any]:
    """Loop ``carry = fn(carry, *x, **kx)`` over the named ``axis``; returns the last carry.

    Arguments as for :func:`scan`.

    Example:
        >>> import distmap
        >>> Layer, Feature = distmap.Axis("layer", 3), distmap.Axis("feature", 2)
        >>> w = distmap.full((Layer, Feature), 2.0)
        >>> distmap.fold(lambda h, w: h * w, Layer)(distmap.ones(Feature), w).array.tolist()
        [8.0, 8.0]
    """
    default, checkpoint = _haliax_options("fold", default, is_scanned, checkpoint, remat)
    return make_loop(fn, axis, "fold", default, args, kwargs, checkpoint, reverse, unroll, returns_y=False,
                 mesh=mesh, axis_mapping=axis_mapping)


def _haliax_options(what: str, default: Any, is_scanned: Any, checkpoint: Any, remat: Any) -> tuple[Any, Any]:
    """``is_scanned`` as a ``default`` spec and ``remat`` as ``checkpoint`` (Haliax's spellings), one of each pair."""
    if remat is not None:
        if checkpoint is not None:
            raise errors.MappingError(f"{what}: pass checkpoint= or remat= (Haliax's name), not both.")
        checkpoint = remat
    if is_scanned is None:
        return default, checkpoint
    if default is not specs.default_spec:
        raise errors.MappingError(f"{what}: pass default= or is_scanned= (Haliax's form), not both.")
    if isinstance(is_scanned, bool):
        flag = is_scanned
        test = lambda leaf: flag  # noqa: E731 - the same shape as a callable is_scanned
    elif callable(is_scanned):
        test = is_scanned
    else:
        raise errors.MappingError(f"{what}(is_scanned=...): expected a bool or a callable leaf -> bool, got {is_scanned!r}.")

    def spec(leaf: Any) -> int | None:
        return 0 if leaves_lib.is_array(leaf) and leaf.ndim > 0 and test(leaf) else None

    return spec, checkpoint


def make_loop(fn, axis, what, default, args_spec, kwargs_spec, checkpoint, reverse, unroll, *, returns_y, label=None,
              arg_label=None, mesh=None, axis_mapping=None):
    """The looped function behind ``scan``/``fold``/``Stacked``: everything checked here, once.

    ``what`` names the loop in errors ("scan", "Stacked.fold"), ``label`` the function,
    ``arg_label(i)`` positional argument ``i``.
    """
    if not callable(fn):
        raise TypeError(f"{what}: fn must be callable, got {type(fn).__name__}.")
    parsed = parse_selection(axis, what=f"{what}(axis=...)")
    if len(parsed) != 1:
        raise errors.AxisSelectorError(
            f"{what}(axis=...): expected one axis to loop over, got {len(parsed)} ({[n for n, _ in parsed]}); "
            "nest two calls to loop over two axes."
        )
    (name, given), = parsed
    if not isinstance(args_spec, (tuple, list)):
        raise errors.MappingError(f"{what}(args=...): expected a tuple of specs, got {type(args_spec).__name__}.")
    if kwargs_spec is not None and not isinstance(kwargs_spec, Mapping):
        raise errors.MappingError(f"{what}(kwargs=...): expected a dict of specs, got {type(kwargs_spec).__name__}.")
    kwargs_spec = {} if kwargs_spec is None else dict(kwargs_spec)
    if default is not specs.default_spec:
        specs.check_spec(default, "default")
    if args_spec:
        specs.check_spec(tuple(args_spec), "args")
    if kwargs_spec:
        specs.check_spec(kwargs_spec, "kwargs")
    policy = ckpt.as_checkpoint(checkpoint, what=f"{what}(checkpoint=...)")
    unroll = check_unroll(unroll, what)
    label = label or _fn_name(fn)
    mesh = mesh_lib.check_mesh(mesh, what)
    fixed_mapping = None if axis_mapping is None else mesh_lib.as_axis_mapping(axis_mapping)
    # One request per looped function: the specs bind to fn's parameters after the carry, read on first need.
    after = _AfterCarry(fn)
    # With no args/kwargs specs there is nothing to bind, so the signature is never read (fn=None).
    bound = after if (args_spec or kwargs_spec) else None
    request = plan_lib.Request(((name, given),), default, tuple(args_spec), kwargs_spec, None, bound)
    arg_label = arg_label or after.label

    @functools.wraps(fn)
    def looped(init: Any, *xs: Any, **kxs: Any) -> Any:
        layout = _layout(what, name, fixed_mapping, mesh, (init, xs, kxs))
        return _run(fn, label, what, request, init, xs, kxs, policy, reverse, unroll, returns_y, arg_label, layout)

    return looped


def _xs_label(i: int) -> str:
    return f"xs[{i}]"


class _Layout:
    """The mesh and axis mapping a loop lays its NamedArrays out by, at every step."""

    __slots__ = ("mapping", "mesh")

    def __init__(self, mapping: Any, mesh: Any):
        self.mapping, self.mesh = mapping, mesh

    def apply(self, tree: Any) -> Any:
        def one(leaf: Any) -> Any:
            if type(leaf) is not NamedArray:
                return leaf
            spec = mesh_lib.loop_pspec(leaf, self.mapping, self.mesh)
            return leaf if spec is None else wrap(mesh_lib.place(leaf.array, spec, self.mesh), leaf.axes)

        return jax.tree_util.tree_map(one, tree, is_leaf=is_named_array)


def _layout(what: str, name: str, mapping: Any, given: Any, trees: Sequence[Any]) -> _Layout | None:
    """Where the loop runs: None on one device, or inside a mesh map (whose arrays are per-device already).

    ``mapping`` is the one given to the loop (checked against the axes of ``trees``, the loop's
    inputs, as ``vmap`` checks its own), ``given`` the mesh given to it. Refused as ``vmap`` refuses:
    a mapping key that names no axis of the loop's arrays, and a mesh given that nothing would use.
    """
    if any(f.mesh_axes for f in frames.current_frames()):
        return None
    if mapping is not None:
        present = _axis_names(trees)
        unused = sorted({n for n, _ in mapping.rules} - present)
        if unused:
            raise errors.MeshError(
                f"{what}(axis_mapping=...): the mapping names {unused}, but no array of this loop has such an axis "
                f"(their axes: {sorted(present)}); an axis mapping given to a loop lays out only its own arrays. Fix "
                "the name, or set mappings meant for the whole program with distmap.axis_mapping(...)."
            )
    else:
        mapping = mesh_lib.current_axis_mapping()
    if mapping is None and given is not None:
        # As vmap: a mesh with no mapping lays out the axes named like its mesh axes.
        same = sorted(_axis_names(trees) & set(given.axis_names))
        if not same:
            raise errors.MeshError(
                f"{what} over {name!r}: mesh={dict(given.shape)} was given, but nothing lays the loop out on it: there "
                "is no axis mapping and no array of the loop has an axis named like a mesh axis. Pass "
                f"axis_mapping={{'<axis>': {tuple(given.axis_names)[0]!r}}} (say), or drop mesh= to loop on one device."
            )
        mapping = mesh_lib.as_axis_mapping({n: n for n in same})
    if mapping is None:
        return None
    mesh = given if given is not None else mesh_lib.current_mesh()
    if mesh is None:
        return None
    looped = mapping.resolve((name,), mesh).get(name)
    if looped:
        raise errors.MeshError(
            f"{what} over {name!r}: the axis mapping splits {name!r} over mesh axes {looped}, but a loop visits its "
            f"elements one after another, so the looped axis must stay whole; map {name!r} to None."
        )
    return _Layout(mapping, mesh)


def _axis_names(trees: Sequence[Any]) -> set[str]:
    """The names of every axis of every NamedArray in ``trees``."""
    out: set[str] = set()
    for leaf in jax.tree_util.tree_leaves(tuple(trees), is_leaf=is_named_array):
        if type(leaf) is NamedArray:
            out.update(ax.name for ax in leaf.axes)
    return out


def check_unroll(unroll: Any, what: str) -> int | bool:
    """``unroll`` as ``jax.lax.scan`` takes it: a positive int, True (unroll every step) or False (1, not unrolled)."""
    if unroll is True:
        return True
    if unroll is False:
        return 1
    if isinstance(unroll, bool) or not isinstance(unroll, (int, np.integer)) or unroll < 1:
        raise errors.MappingError(
            f"{what}(unroll=...): expected a positive int, True (unroll fully) or False (not unrolled), got {unroll!r}."
        )
    return int(unroll)


def _fn_name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


class Sliced:
    """The scanned arguments of one call taken apart: ``arrays`` have the looped axis at dim 0.

    ``at(slices)`` puts one step's ``(xs, kxs)`` back together; ``scan``, ``fold``, ``Stacked`` and
    ``BlockSeq`` all read which leaves are sliced from here, so they cannot disagree.
    """

    __slots__ = ("treedef", "kinds", "arrays", "axis")

    def __init__(self, treedef: Any, kinds: list[Any], arrays: list[Any], axis: Axis):
        self.treedef, self.kinds, self.arrays, self.axis = treedef, kinds, arrays, axis

    def at(self, slices: Sequence[Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
        it = iter(slices)
        parts = []
        for tag, v in self.kinds:
            if tag == "whole":
                parts.append(v)
            else:
                s = next(it)
                parts.append(s if v is True else wrap(s, v))
        return jax.tree_util.tree_unflatten(self.treedef, parts)

    def index(self, i: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """Step ``i``'s arguments (for a Python loop over the steps)."""
        return self.at([a[i] for a in self.arrays])


def slice_args(
    what: str,
    name: str,
    given: int | None,
    xs: Sequence[Any],
    kxs: Mapping[str, Any],
    default: Any = specs.default_spec,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    *,
    fn: Callable[..., Any] | None = None,
    arg_label: Callable[[int], str] | None = None,
) -> Sliced:
    """Which leaves of ``(xs, kxs)`` are sliced along ``name``, and how many steps there are.

    The leaves are resolved by the map engine's plan (:func:`distmap._src.map.plan.resolve`), the
    one that decides ``vmap``'s mapped dimensions, so a spec, a size or an axis means the same in a
    loop as in a map. ``fn``'s parameters (``xs`` onwards) are what ``args``/``kwargs`` bind to;
    ``arg_label(i)`` names positional argument ``i`` in errors (default ``xs[i]``).
    """
    request = plan_lib.Request(((name, given),), default, tuple(args), dict(kwargs or {}), None, fn)
    return resolve_slices(request, what, xs, kxs, arg_label or _xs_label)


def resolve_slices(
    request: plan_lib.Request, what: str, xs: Sequence[Any], kxs: Mapping[str, Any], arg_label: Callable[[int], str]
) -> Sliced:
    """:func:`slice_args` for a request built once (the loop's axis is its only level)."""
    name = request.names[0]
    try:
        plan, leaves = plan_lib.resolve(request, tuple(xs), dict(kxs))
    except errors.AxisSizeError as e:
        raise errors.AxisSizeError(_retitle(_length_message(str(e), name, xs, kxs), what, name, arg_label)) from None
    except errors.MappingError as e:
        raise errors.MappingError(_retitle(str(e), what, name, arg_label)) from None
    scanned: list[Any] = []  # arrays with the looped axis at dim 0
    kinds: list[Any] = []  # per leaf: ("slice", inner axes | True) or ("whole", leaf)
    for i, leaf in enumerate(leaves):
        row = plan.dims[i]
        d = None if row is None else row[0]
        if d is None:
            kinds.append(("whole", leaf))
            continue
        arr = leaf.array if type(leaf) is NamedArray else leaf
        scanned.append(jax.numpy.moveaxis(arr, d, 0) if d else arr)
        kinds.append(("slice", plan.inner[i] if type(leaf) is NamedArray else True))
    return Sliced(plan.treedef, kinds, scanned, Axis(name, plan.sizes[0]))


def _retitle(msg: str, what: str, name: str, arg_label: Callable[[int], str]) -> str:
    """The plan's message in the loop's terms: the loop's name, and its arguments as the caller passed them
    (positional ones by parameter name where known, keyword ones by their keyword)."""
    msg = msg.replace(f"vmap over {name!r}", f"{what} over {name!r}").replace("vmap: ", f"{what}: ")
    msg = re.sub(r"\bargs\[(\d+)\]", lambda m: arg_label(int(m.group(1))), msg)
    msg = re.sub(r"\bkwargs\['(\w+)'\]", r"\1", msg)
    return msg if msg.startswith(what) else f"{what} over {name!r}: {msg}"


_SIZES = re.compile(r"has size (\d+) in (\S+) but size (\d+) in (\S+)\. ")


def _length_message(msg: str, name: str, xs: Sequence[Any], kxs: Mapping[str, Any]) -> str:
    """The plan's size disagreement told as a loop's: which argument has which length along the loop, an
    unnamed array's by its leading dimension (as ``jax.lax.scan`` counts it)."""
    m = _SIZES.search(msg)
    if m is None:
        return msg
    flat, _ = jax.tree_util.tree_flatten_with_path((tuple(xs), dict(kxs)), is_leaf=is_named_array)
    by_path = {specs.path_str(p): leaf for p, leaf in flat}

    def one(path: str, size: str) -> str:
        leaf = by_path.get(path)
        if leaf is not None and not isinstance(leaf, NamedArray) and getattr(leaf, "shape", ())[:1] == (int(size),):
            return f"{path} has leading dimension {size}"
        return f"{path} has {name!r} of size {size}"

    return (f"the loop's length differs between its sliced arguments: {one(m.group(2), m.group(1))}, but "
            f"{one(m.group(4), m.group(3))}. Every sliced argument must have the same length along {name!r}; "
            "slice them to one length, or pass an argument whole (spec None, or is_scanned=False).")


class _AfterCarry:
    """Stands for ``fn`` in spec binding: its signature is ``fn``'s without the first parameter (the
    carry), computed only if a spec needs binding (``inspect`` reads ``__signature__``)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[..., Any]):
        self.fn = fn

    def __call__(self, *a: Any, **k: Any) -> None:  # never called: only its signature is read
        raise AssertionError("_AfterCarry stands in for a signature only")

    def label(self, i: int) -> str:
        """Positional argument ``i`` (after the carry) by its parameter's name where there is one, else ``xs[i]``."""
        kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        names = [p.name for p in self.__signature__.parameters.values() if p.kind in kinds]
        return names[i] if i < len(names) else f"xs[{i}]"

    @property
    def __signature__(self) -> inspect.Signature:
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):
            return inspect.Signature([inspect.Parameter("xs", inspect.Parameter.VAR_POSITIONAL)])
        params = list(sig.parameters.values())
        if params and params[0].kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            params = params[1:]
        else:  # (*args) first: bind by the call's positions
            params = [inspect.Parameter("xs", inspect.Parameter.VAR_POSITIONAL)]
        return sig.replace(parameters=params)


def _run(fn, label, what, request, init, xs, kxs, policy, reverse, unroll, returns_y, arg_label, layout):
    name = request.names[0]
    if layout is not None:
        # The carry (and, per step, the new carry and the ys) are laid out by their names. The sliced arguments
        # keep the layout they arrive in: constraining a whole stack to the context mapping before the loop
        # gathered every layer at once under an FSDP-style parameter mapping, and constraining each step's
        # slice cost temporaries that XLA's own choice (Haliax's) does not (benchmarks/bench_decoder.py).
        init = layout.apply(init)
    sliced = resolve_slices(request, what, xs, kxs, arg_label)
    axis, length = sliced.axis, sliced.axis.size

    # NamedArrays flatten with their axes in the treedef, so jax.lax.scan itself refuses a carry
    # whose axes changed; the step keeps what it returned so the refusal can be explained.
    returned: list[Any] = []
    y_info: list[Any] = []

    lowered = None if policy is None else policy.lower(name, length, what=f"{what} over {name!r}")

    def step(carry: Any, slices: Sequence[Any]) -> tuple[Any, Any]:
        carry, slices = ckpt.tag_step(lowered, name, carry, slices)
        a, k = sliced.at(slices)
        out = fn(carry, *a, **k)
        if returns_y:
            if not (isinstance(out, (tuple, list)) and len(out) == 2):
                raise errors.MappingError(
                    f"scan over {name!r}: {label} must return a pair (carry, y), got {_describe(out)}; "
                    "use distmap.fold for a function that returns only the carry."
                )
            new_carry, y = out
        else:
            new_carry, y = out, None
        returned[:] = [new_carry]
        if layout is not None:
            new_carry, y = layout.apply((new_carry, y))
        y_tree, y_kinds, y_arrays = leaves_lib.split(y)
        for kind in y_kinds:
            if type(kind) is tuple and any(ax.name == name for ax in kind):
                raise errors.MappingError(
                    f"scan over {name!r}: {label} returned a y with axis {name!r} already "
                    f"(axes {tuple(ax.name for ax in kind)}); the scan stacks ys along {name!r}, so rename it."
                )
        y_info[:] = [y_tree, y_kinds]
        return new_carry, y_arrays

    try:
        if lowered is None:
            carry, ys = jax.lax.scan(step, init, sliced.arrays, length=length, reverse=reverse, unroll=unroll)
        else:
            carry, ys = ckpt.nested_scan(step, init, sliced.arrays, length, lowered, reverse=reverse, unroll=unroll)
    except TypeError:
        if returned:  # JAX refused the carry: say which part changed, in distmap's terms (raises if found)
            _check_carry(what, label, name, *_signature(init), returned[0])
        raise
    if not returns_y:
        return carry
    y_tree, y_kinds = y_info
    return carry, leaves_lib.join(y_tree, y_kinds, ys, front=(axis,))


def _signature(tree: Any) -> tuple[Any, list[Any]]:
    leaves, treedef = jax.tree_util.tree_flatten(tree, is_leaf=is_named_array)
    return treedef, [_leaf_sig(leaf) for leaf in leaves]


def _leaf_sig(leaf: Any) -> Any:
    # Shapes and named axes only: dtypes (weak types included) are JAX's to reconcile or refuse.
    if isinstance(leaf, NamedArray):
        return ("named", tuple(leaf.axes))
    if isinstance(leaf, (int, float, complex)):
        return ("array", ())
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
        return ("array", tuple(leaf.shape))
    return ("value", type(leaf).__name__)


def _show(sig: Any) -> str:
    if sig[0] == "named":
        return "a NamedArray with axes " + str(tuple((a.name, a.size) for a in sig[1]))
    if sig[0] == "array":
        return f"an unnamed array of shape {sig[1]}"
    return f"a {sig[1]}"


def _describe(x: Any) -> str:
    if isinstance(x, NamedArray):
        return f"a NamedArray with axes {x.axis_names}"
    return f"a {type(x).__name__}"


def _check_carry(what, label, name, tree_in, sig_in, new_carry) -> None:
    """The carry must come back as it went in; say which part changed, before and after, in distmap's terms."""
    tree_out, sig_out = _signature(new_carry)
    if tree_out != tree_in:
        raise errors.MappingError(
            f"{what} over {name!r}: {label} changed the structure of the carry: it went in as {tree_in} and came "
            f"back as {tree_out}. The carry must keep its structure from step to step."
        )
    paths = None
    for i, (a, b) in enumerate(zip(sig_in, sig_out)):
        if a == b or (a[0] == "value" and b[0] == "value"):
            continue
        if a[0] == b[0] == "named":
            detail = f"axes {tuple((x.name, x.size) for x in a[1])} -> {tuple((x.name, x.size) for x in b[1])}"
        else:
            detail = f"{_show(a)} -> {_show(b)}"
        if paths is None:
            flat, _ = jax.tree_util.tree_flatten_with_path(new_carry, is_leaf=is_named_array)
            paths = ["carry" + jax.tree_util.keystr(p) for p, _ in flat]
        raise errors.MappingError(
            f"{what} over {name!r}: {label} changed {paths[i]}: {detail} (before -> after one step). The carry "
            "must keep its named axes and shapes from step to step; return per-step values as scan's y instead."
        )
