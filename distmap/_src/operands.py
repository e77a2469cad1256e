"""How the named-array functions read their operands: one definition each, shared by ops, math, reductions, random.

Every function here either returns its operand in the form the caller needs or raises an
error that names the function and the argument, so a public function checks its inputs in
one line:

Example:
    >>> import distmap
    >>> from distmap._src import operands
    >>> x = distmap.named([1.0, 2.0], "batch")
    >>> axes, (a, b) = operands.broadcast_operands((("x", x), ("y", 3.0)), "add")
    >>> axes, b
    ((Axis(name='batch', size=2),), 3.0)
    >>> operands.axis_dims(x, "batch", "sum")
    (0,)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax.numpy as jnp

from distmap import errors
from distmap._src.axis import Axis, AxisSelection, AxisSelector, parse_selection
from distmap._src.named import NamedArray, align, scalar_operand, wrap


def check_named(x: Any, fn: str, what: str = "x") -> NamedArray:
    """``x`` if it is a NamedArray; anything else raises, naming ``fn`` and ``what``."""
    if not isinstance(x, NamedArray):
        raise errors.ArgumentTypeError(
            f"{fn}: {what} must be a NamedArray, got {type(x).__name__}; give an array names with distmap.named."
        )
    return x


def single_axis(axis: Any, fn: str) -> AxisSelector:
    """``axis`` if it is one Axis or axis name (not a sequence of them); anything else raises."""
    if not isinstance(axis, (Axis, str)):
        hint = ""
        if isinstance(axis, (list, tuple)) and any(isinstance(a, NamedArray) for a in axis):
            hint = f" (the axis comes first: {fn}(axis, arrays))"
        shown = axis if not isinstance(axis, (list, tuple)) else f"of length {len(axis)}"
        raise errors.AxisSelectorError(
            f"{fn}: axis must be one Axis or axis name, got {type(axis).__name__} {shown}{hint}."
        )
    return axis


def check_subset(x: NamedArray, axes: tuple[Axis, ...], fn: str, what: str) -> NamedArray:
    """``x`` if each of its axes is among ``axes`` with the same size (a parameter broadcast into a result)."""
    by_name = {a.name: a.size for a in axes}
    for a in x.axes:
        if a.name not in by_name:
            raise errors.AxisNotFoundError(
                f"{fn}: {what} has axis {a.name!r}, which is not among the result's axes {tuple(by_name)}."
            )
        if by_name[a.name] != a.size:
            raise errors.AxisSizeError(
                f"{fn}: axis {a.name!r} has size {a.size} in {what} but size {by_name[a.name]} in the result."
            )
    return x


def as_named(x: Any, fn: str, what: str = "x") -> NamedArray:
    """``x`` if named; a scalar or 0-d array as a NamedArray with no axes."""
    if isinstance(x, NamedArray):
        return x
    return wrap(jnp.asarray(scalar_operand(x, f"{fn}: {what}")), ())


def broadcast_operands(
    operands: Sequence[tuple[str, Any]], fn: str, *, allow_none: bool = False
) -> tuple[tuple[Axis, ...], list[Any]]:
    """Line up ``(label, operand)`` pairs by name for an elementwise ``fn``.

    Returns the union of the named operands' axes (in order of first appearance) and
    the operands, NamedArrays as arrays aligned to that union and scalars as they are.
    With ``allow_none``, ``None`` operands pass through (optional bounds such as ``clip``'s).
    """
    seen: dict[str, tuple[Axis, str]] = {}
    out_axes: list[Axis] = []
    for label, op in operands:
        if isinstance(op, NamedArray):
            for a in op.axes:
                prev = seen.get(a.name)
                if prev is None:
                    seen[a.name] = (a, label)
                    out_axes.append(a)
                elif prev[0].size != a.size:
                    raise errors.AxisSizeError(
                        f"{fn}: axis {a.name!r} has size {prev[0].size} in {prev[1]} but size {a.size} in {label}; "
                        "arrays combined by name must agree on each shared axis."
                    )
    axes = tuple(out_axes)
    arrays: list[Any] = []
    for label, op in operands:
        if isinstance(op, NamedArray):
            arrays.append(align(op, axes))
        elif op is None and allow_none:
            arrays.append(None)
        else:
            arrays.append(scalar_operand(op, f"{fn}: {label}"))
    return axes, arrays


def axis_dims(x: NamedArray, axis: AxisSelection | None, fn: str = "axis") -> tuple[int, ...]:
    """The positions in ``x`` of the selected axes (every axis for ``None``), checking sizes given with names."""
    if axis is None:
        return tuple(range(x.ndim))
    if isinstance(axis, (str, Axis)):
        return (x.axis_indices(axis),)
    parse_selection(axis, what=f"{fn}(axis=...)")  # a bad selection is named by the function it was given to
    dims = x.axis_indices(axis)  # checks sizes given with the names
    return dims if isinstance(dims, tuple) else (dims,)
