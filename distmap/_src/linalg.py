"""Contractions over named axes: ``dot`` and a names-only ``einsum``.

Both lower to one ``jnp.einsum`` call: each distinct axis name gets a subscript
letter, each operand's subscripts follow its own axis order, so no transposes are
written by hand and operands may hold their axes in any order.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from distmap import errors
from distmap._src.axis import Axis, AxisSelection, parse_selection
from distmap._src.mesh import entry_axes, spec_entry
from distmap._src.named import NamedArray, wrap
from distmap._src.partitioning import auto_sharded

_LETTERS = string.ascii_letters


def _subscript(k: int) -> str:
    # 52 ASCII letters, then CJK ideographs: jnp.einsum accepts any alphabetic character.
    return _LETTERS[k] if k < len(_LETTERS) else chr(0x4E00 + k - len(_LETTERS))


def _check_arrays(arrays: Sequence[Any], fn: str) -> tuple[NamedArray, ...]:
    if not arrays:
        raise errors.ArgumentTypeError(f"{fn}: needs at least one NamedArray.")
    for i, a in enumerate(arrays):
        if not isinstance(a, NamedArray):
            hint = ""
            if isinstance(a, (str, Axis)) and fn == "dot":
                hint = " (the axes to contract go in the keyword argument: dot(x, y, axis=...))"
            raise errors.ArgumentTypeError(f"{fn}: arrays[{i}] must be a NamedArray, got {type(a).__name__} {a!r}{hint}.")
    return tuple(arrays)


def _union(arrays: Sequence[NamedArray], fn: str) -> dict[str, tuple[Axis, int]]:
    """``{name: (axis, first array index)}`` in order of first appearance; sizes checked."""
    seen: dict[str, tuple[Axis, int]] = {}
    for i, x in enumerate(arrays):
        for a in x.axes:
            prev = seen.get(a.name)
            if prev is None:
                seen[a.name] = (a, i)
            elif prev[0].size != a.size:
                raise errors.AxisSizeError(
                    f"{fn}: axis {a.name!r} has size {prev[0].size} in arrays[{prev[1]}] but size {a.size} in "
                    f"arrays[{i}]; arrays contracted together must agree on each shared axis."
                )
    return seen


def _contract(
    arrays: Sequence[NamedArray],
    union: dict[str, tuple[Axis, int]],
    out_names: Sequence[str],
    precision: Any,
    preferred_element_type: Any,
) -> NamedArray:
    letter = {name: _subscript(k) for k, name in enumerate(union)}
    ins = ",".join("".join(letter[a.name] for a in x.axes) for x in arrays)
    out = "".join(letter[n] for n in out_names)
    extra = {}
    out_sharding = _explicit_out_sharding(arrays, out_names)
    if out_sharding is not None:
        extra["out_sharding"] = out_sharding
    result = jnp.einsum(
        f"{ins}->{out}",
        *(x.array for x in arrays),
        precision=precision,
        preferred_element_type=preferred_element_type,
        **extra,
    )
    return auto_sharded(wrap(result, tuple(union[n][0] for n in out_names)))


def _explicit_out_sharding(arrays: Sequence[NamedArray], out_names: Sequence[str]) -> Any:
    """On an Explicit mesh, the result's sharding when a contracted axis is split (else None).

    JAX cannot tell how to lay out a contraction over a split dimension, and asks; the names
    can: every result axis keeps the mesh axes it is split over in the operands (the first
    operand that splits it), and the contracted ones are summed across their devices.
    """
    by_name: dict[str, Any] = {}
    mesh = None
    contracted_split = False
    out_set = set(out_names)
    for x in arrays:
        sharding = getattr(jax.typeof(x.array), "sharding", None)
        spec = getattr(sharding, "spec", None)
        if sharding is None or not spec or not any(p is not None for p in spec):
            continue
        mesh = sharding.mesh
        for a, p in zip(x.axes, spec):
            if p is None:
                continue
            if a.name not in out_set:
                contracted_split = True
            else:
                by_name.setdefault(a.name, p)
    if not contracted_split or mesh is None:
        return None
    used: set[str] = set()
    parts = []
    for n in out_names:
        p = by_name.get(n)
        axes = entry_axes(p)
        if any(a in used for a in axes):
            axes = ()
        used.update(axes)
        parts.append(spec_entry(axes))
    return PartitionSpec(*parts)


def dot(
    *arrays: NamedArray,
    axis: AxisSelection | None,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> NamedArray:
    """Multiply arrays elementwise, broadcasting by name, and sum over the axes in ``axis``.

    ``axis`` (keyword-only, required) is a selector or a selection: the axes to
    contract. ``axis=()`` contracts nothing (a broadcast product); ``axis=None``
    contracts every axis, so the result has no axes. The result's axes are the
    union of the inputs' axes, in order of first appearance, less the contracted
    ones. Each named axis must appear in at least one array.

    Example:
        >>> import distmap
        >>> x = distmap.ones({"batch": 2, "embed": 3})
        >>> w = distmap.ones({"embed": 3, "hidden": 4})
        >>> distmap.dot(x, w, axis="embed").shape
        {'batch': 2, 'hidden': 4}
        >>> distmap.dot(x, w, axis=None).array
        Array(24., dtype=float32)
    """
    arrays = _check_arrays(arrays, "dot")
    union = _union(arrays, "dot")
    if axis is None:
        contracted = set(union)
    else:
        contracted = set()
        for name, size in parse_selection(axis, what="dot(axis=...)"):
            if name not in union:
                raise errors.AxisNotFoundError(
                    f"dot: axis {name!r} is in none of the arrays; their axes are {tuple(union)}."
                )
            if size is not None and size != union[name][0].size:
                raise errors.AxisSizeError(
                    f"dot: Axis({name!r}, {size}) was asked for, but the arrays have size {union[name][0].size} there."
                )
            contracted.add(name)
    out = [n for n in union if n not in contracted]
    return _contract(arrays, union, out, precision, preferred_element_type)


def _terms(text: str, what: str, spec: str) -> list[str]:
    toks = text.split()
    for t in toks:
        if "..." in t and t != "...":
            raise errors.AxisSelectorError(f"einsum: {what} has a malformed token {t!r} in {spec!r}.")
    if toks.count("...") > 1:
        raise errors.AxisSelectorError(f"einsum: {what} uses '...' more than once in {spec!r}.")
    names = [t for t in toks if t != "..."]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise errors.DuplicateAxisError(f"einsum: {what} names {dup} more than once in {spec!r}.")
    return toks


def einsum(
    spec: str,
    *arrays: NamedArray,
    precision: Any = None,
    preferred_element_type: Any = None,
) -> NamedArray:
    """Contract arrays by a spec written with axis names.

    The spec is ``"in0, in1, ... -> out"``: operands separated by commas, axis
    names by whitespace. Each operand's part names exactly that operand's axes, in
    any order; ``...`` in it stands for the axes it does not name.

    * With ``-> out``, the result has the named axes in that order, and ``...`` in
      ``out`` stands for every axis named nowhere in the spec (only covered by an
      operand's ``...``), in order of first appearance. Every other axis is summed over.
    * Without ``->``, the result keeps the axes that appear in exactly one operand, in
      order of first appearance (unlike NumPy, not sorted); shared axes are summed over.

    "Order of first appearance" reads the operands left to right, each in the order
    its spec names its axes, with ``...`` expanded in the operand's own order.

    Example:
        >>> import distmap
        >>> x = distmap.ones({"batch": 2, "embed": 3})
        >>> w = distmap.ones({"hidden": 4, "embed": 3})
        >>> distmap.einsum("batch embed, embed hidden -> batch hidden", x, w).shape
        {'batch': 2, 'hidden': 4}
        >>> distmap.einsum("... embed, embed hidden -> ... hidden", x, w).shape
        {'batch': 2, 'hidden': 4}
        >>> distmap.einsum("batch embed, embed hidden", x, w).array[0, 0]
        Array(3., dtype=float32)
    """
    if not isinstance(spec, str):
        raise errors.AxisSelectorError(
            f"einsum: the first argument is the spec, a str such as 'batch embed, embed hidden -> batch hidden'; "
            f"got {type(spec).__name__}."
        )
    arrays = _check_arrays(arrays, "einsum")
    if spec.count("->") > 1:
        raise errors.AxisSelectorError(f"einsum: the spec {spec!r} has more than one '->'.")
    lhs, arrow, rhs = spec.partition("->")
    parts = lhs.split(",")
    if len(parts) != len(arrays):
        raise errors.ShapeMismatchError(
            f"einsum: the spec {spec!r} describes {len(parts)} operand(s), but {len(arrays)} array(s) were given."
        )
    union = _union(arrays, "einsum")
    order: dict[str, None] = {}  # axis names in order of first appearance, as the spec reads
    explicit: set[str] = set()
    counts: dict[str, int] = {}
    for i, (part, x) in enumerate(zip(parts, arrays)):
        toks = _terms(part, f"operand {i}", spec)
        names = [t for t in toks if t != "..."]
        for n in names:
            if n not in x.axis_names:
                raise errors.AxisNotFoundError(
                    f"einsum: operand {i} ({part.strip()!r}) names axis {n!r}, but arrays[{i}] has axes {x.axis_names}."
                )
        rest = [n for n in x.axis_names if n not in set(names)]
        if "..." not in toks and rest:
            raise errors.ShapeMismatchError(
                f"einsum: operand {i} ({part.strip()!r}) leaves out axes {tuple(rest)} of arrays[{i}], whose axes are "
                f"{x.axis_names}; name them or add '...'."
            )
        for t in toks:
            for n in rest if t == "..." else [t]:
                order.setdefault(n, None)
                counts[n] = counts.get(n, 0) + 1
        explicit.update(names)
    if arrow:
        out_toks = _terms(rhs, "the output", spec)
        out_named = [t for t in out_toks if t != "..."]
        for n in out_named:
            if n not in union:
                raise errors.AxisNotFoundError(
                    f"einsum: the output names axis {n!r}, which no operand has; the operands' axes are {tuple(order)}."
                )
        mentioned = explicit | set(out_named)
        out: list[str] = []
        for t in out_toks:
            if t == "...":
                out.extend(n for n in order if n not in mentioned)
            else:
                out.append(t)
    else:
        out = [n for n in order if counts[n] == 1]
    return _contract(arrays, union, out, precision, preferred_element_type)
